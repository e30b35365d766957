/* ping_pongs: one TCP connection over loopback, client and server in one loop; the client sends
 * a 4-byte PING, the server echoes it, the client sends the next when the whole PING is back —
 * as libuv's benchmark-ping-pongs.c. Reports round trips per second. */
#include "micro.h"

#define PING "PING"
#define PING_LEN 4

struct peer {
    uv_tcp_t tcp;
    char buf[64 * 1024];
    size_t have;
};

static uv_loop_t *loop;
static uv_tcp_t listener;
static struct peer client, server_side;
static uv_connect_t connect_req;
static unsigned long pongs, target;
static uint64_t start;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct peer *p = (struct peer *)h;
    *buf = uv_buf_init(p->buf + p->have, (unsigned)(sizeof p->buf - p->have));
}

static void send_ping(uv_stream_t *stream, const char *data, size_t len)
{
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int sent = uv_try_write(stream, &buf, 1);
    if (sent != (int)len) {
        fprintf(stderr, "ping_pongs: short write (%d)\n", sent);
        exit(1);
    }
}

static void on_server_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    if (nread < 0) {
        uv_close((uv_handle_t *)stream, NULL);
        return;
    }
    if (nread > 0)
        send_ping(stream, buf->base, (size_t)nread);
}

static void on_client_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread < 0) {
        fprintf(stderr, "ping_pongs: client read: %s\n", uv_strerror((int)nread));
        exit(1);
    }
    client.have += (size_t)nread;
    if (client.have < PING_LEN)
        return;
    if (client.have > PING_LEN || memcmp(client.buf, PING, PING_LEN) != 0) {
        fprintf(stderr, "ping_pongs: bad echo\n");
        exit(1);
    }
    client.have = 0;
    if (++pongs == target) {
        double elapsed = seconds_since(start);
        printf("uv_ping_pongs: %.0f round trips/s (%.2f us per round trip, %lu round trips)\n",
               (double)pongs / elapsed, elapsed * 1e6 / (double)pongs, pongs);
        uv_close((uv_handle_t *)stream, NULL);
        uv_close((uv_handle_t *)&listener, NULL);
        return;
    }
    send_ping(stream, PING, PING_LEN);
}

static void on_accept(uv_stream_t *l, int status)
{
    CHECK(status);
    CHECK(uv_tcp_init(loop, &server_side.tcp));
    CHECK(uv_accept(l, (uv_stream_t *)&server_side.tcp));
    uv_tcp_nodelay(&server_side.tcp, 1);
    CHECK(uv_read_start((uv_stream_t *)&server_side.tcp, on_alloc, on_server_read));
}

static void on_connect(uv_connect_t *req, int status)
{
    CHECK(status);
    uv_tcp_nodelay(&client.tcp, 1);
    CHECK(uv_read_start(req->handle, on_alloc, on_client_read));
    start = uv_hrtime();
    send_ping(req->handle, PING, PING_LEN);
}

int main(int argc, char **argv)
{
    target = quick_mode(argc, argv) ? 2000 : 200000;
    loop = uv_default_loop();
    struct sockaddr_in addr;
    CHECK(uv_ip4_addr("127.0.0.1", 0, &addr));
    CHECK(uv_tcp_init(loop, &listener));
    CHECK(uv_tcp_bind(&listener, (const struct sockaddr *)&addr, 0));
    CHECK(uv_listen((uv_stream_t *)&listener, 16, on_accept));
    struct sockaddr_storage bound;
    int len = sizeof bound;
    CHECK(uv_tcp_getsockname(&listener, (struct sockaddr *)&bound, &len));
    CHECK(uv_tcp_init(loop, &client.tcp));
    CHECK(uv_tcp_connect(&connect_req, &client.tcp, (const struct sockaddr *)&bound, on_connect));
    CHECK(uv_run(loop, UV_RUN_DEFAULT));
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
