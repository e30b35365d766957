/* Reference echo server on libuv, one thread, written the way a careful libuv user would:
 *
 * - each connection reads into its own buffer, allocated once (libuv's alloc callback hands it
 *   out again for every read, so nothing is allocated per read);
 * - echoes go out with uv_try_write first (no request, no copy when the socket takes it all);
 * - only the remainder is copied into a uv_write request, and reading pauses until that write
 *   completes — backpressure instead of unbounded buffering. */
#include "common.h"

#include <uv.h>

#define READ_BUFFER (64 * 1024)

struct conn {
    uv_tcp_t handle;    /* first member: the handle pointer is the connection pointer */
    char buf[READ_BUFFER];
};

struct pending_write {
    uv_write_t req;
    struct conn *conn;
    char data[];
};

static uv_loop_t *loop;
static uv_tcp_t server;
static uv_signal_t sigint_watcher, sigterm_watcher;

static void on_closed(uv_handle_t *handle)
{
    free(handle); /* struct conn starts with its handle */
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct conn *c = (struct conn *)handle;
    *buf = uv_buf_init(c->buf, sizeof c->buf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status)
{
    struct pending_write *pw = (struct pending_write *)req;
    struct conn *c = pw->conn;
    free(pw);
    if (status < 0) {
        if (!uv_is_closing((uv_handle_t *)&c->handle))
            uv_close((uv_handle_t *)&c->handle, on_closed);
        return;
    }
    if (!uv_is_closing((uv_handle_t *)&c->handle))
        uv_read_start((uv_stream_t *)&c->handle, on_alloc, on_read);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)stream;
    if (nread < 0) {
        uv_close((uv_handle_t *)stream, on_closed);
        return;
    }
    if (nread == 0)
        return; /* EAGAIN */
    uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
    int sent = uv_try_write(stream, &out, 1);
    if (sent == nread)
        return;
    if (sent < 0 && sent != UV_EAGAIN) {
        uv_close((uv_handle_t *)stream, on_closed);
        return;
    }
    size_t done = sent > 0 ? (size_t)sent : 0;
    size_t rest = (size_t)nread - done;
    struct pending_write *pw = malloc(sizeof *pw + rest);
    if (pw == NULL) {
        uv_close((uv_handle_t *)stream, on_closed);
        return;
    }
    pw->conn = c;
    memcpy(pw->data, buf->base + done, rest);
    uv_buf_t tail = uv_buf_init(pw->data, (unsigned)rest);
    uv_read_stop(stream);
    if (uv_write(&pw->req, stream, &tail, 1, on_written) < 0) {
        free(pw);
        uv_close((uv_handle_t *)stream, on_closed);
    }
}

static void on_connection(uv_stream_t *listener, int status)
{
    if (status < 0) {
        fprintf(stderr, "connection: %s\n", uv_strerror(status));
        return;
    }
    struct conn *c = malloc(sizeof *c);
    if (c == NULL)
        return;
    uv_tcp_init(loop, &c->handle);
    if (uv_accept(listener, (uv_stream_t *)&c->handle) < 0) {
        uv_close((uv_handle_t *)&c->handle, on_closed);
        return;
    }
    uv_tcp_nodelay(&c->handle, 1);
    uv_read_start((uv_stream_t *)&c->handle, on_alloc, on_read);
}

static void close_everything(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle))
        uv_close(handle, handle->type == UV_TCP && handle != (uv_handle_t *)&server ? on_closed : NULL);
}

static void on_signal(uv_signal_t *watcher, int signo)
{
    (void)watcher;
    (void)signo;
    uv_walk(loop, close_everything, NULL);
}

int main(int argc, char **argv)
{
    int port = parse_port(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();

    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(loop, &server);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, 4096, on_connection);
    if (rc < 0) {
        fprintf(stderr, "listen on port %d: %s\n", port, uv_strerror(rc));
        return 1;
    }
    uv_os_fd_t listen_fd;
    uv_fileno((uv_handle_t *)&server, &listen_fd);
    uv_signal_init(loop, &sigint_watcher);
    uv_signal_init(loop, &sigterm_watcher);
    uv_signal_start(&sigint_watcher, on_signal, SIGINT);
    uv_signal_start(&sigterm_watcher, on_signal, SIGTERM);
    announce(listen_fd);

    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
