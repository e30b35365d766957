/* A TCP echo server in callback mode: accept, multishot receive into the loop's buffers, send
 * from the connection's own memory, close through the loop.
 *
 *   echo_server PORT    (0 picks a free port; prints "listening on PORT" when ready)
 *
 * Serves until SIGINT or SIGTERM (handled by the loop through rl_signal_start), then stops
 * accepting, closes every connection through the loop, lets rl_run() return once nothing is left
 * and frees the loop: exit status 0.
 *
 * Received bytes are echoed without a copy: the receive callback keeps the loop buffer they are
 * in (rl_recv_keep), sends straight from it, and the send's callback releases it. Sends on one
 * socket complete in order, so a connection's in-flight sends form a FIFO. Copying takes over when
 * a connection already has MAX_INFLIGHT sends out, when the server keeps half of the loop's
 * buffers (a peer that does not read its echo must not starve every other connection's
 * receives), or for bytes the loop delivers from a copy of its own: those bytes go to the
 * connection's output queue, sent as one buffer once the sends before it are out, and newer bytes
 * join the queue while it is not empty. A connection whose queue grows past MAX_QUEUED is dropped.
 * After the peer's end of stream the server echoes what it still holds, then closes. */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>

#include "example.h"

/* A peer that sends without reading its echo would make the output queue grow without bound:
 * past this many queued bytes the connection is dropped. (Receiving is not paused with a cancel
 * instead: on io_uring a cancelled multishot receive may already have taken bytes from the socket
 * that are then not delivered, which would corrupt the echoed stream.) */
#define MAX_QUEUED (64u << 20)
/* Sends one connection may have in flight (kept buffers plus at most one queue send). */
#define MAX_INFLIGHT 8
/* An in-flight entry that is the connection's queue send rather than a kept buffer. */
#define QUEUE_SEND (-1)

struct buf {
    unsigned char *data;
    size_t len, cap;
};

struct server;

struct conn {
    struct server *server;
    struct conn *prev, *next;
    int fd;
    int receiving;      /* the multishot receive is armed */
    int eof;            /* the peer finished sending: close once everything is echoed */
    int closing;        /* rl_close submitted */
    int close_done;     /* ... and its callback ran */
    struct buf queue;   /* received and copied, not yet handed to a send */
    struct buf sending; /* owned by the in-flight queue send while len > 0 */
    /* In-flight sends, oldest first: a kept buffer's id, or QUEUE_SEND. */
    int inflight[MAX_INFLIGHT];
    int inflight_head, inflight_count;
};

struct server {
    int listen_fd;
    int stopping;
    uint64_t accept_op;
    struct conn *conns;
    unsigned long accepted;
    uint32_t buffer_count; /* the loop's receive buffers */
    uint32_t kept_buffers; /* kept by all connections together */
};

static void on_recv(rl_loop *loop, const rl_outcome *o, void *data);
static void on_send(rl_loop *loop, const rl_outcome *o, void *data);
static void on_close(rl_loop *loop, const rl_outcome *o, void *data);

static void append(struct buf *b, const uint8_t *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        unsigned char *grown;
        while (cap < b->len + len)
            cap *= 2;
        grown = realloc(b->data, cap);
        if (grown == NULL) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void push_inflight(struct conn *c, int entry)
{
    c->inflight[(c->inflight_head + c->inflight_count) % MAX_INFLIGHT] = entry;
    c->inflight_count++;
}

static int pop_inflight(struct conn *c)
{
    int entry = c->inflight[c->inflight_head];
    c->inflight_head = (c->inflight_head + 1) % MAX_INFLIGHT;
    c->inflight_count--;
    return entry;
}

/* A connection is freed once its close completed and no send still reads its memory. */
static void maybe_free(struct conn *c)
{
    if (!c->close_done || c->inflight_count > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->server->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->queue.data);
    free(c->sending.data);
    free(c);
}

static void start_close(rl_loop *loop, struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->receiving = 0;
    /* Ends the receive and any pending send (which still gets its final callback). */
    CHECK_RL(rl_close(loop, c->fd, on_close, c, NULL));
}

static void start_recv(rl_loop *loop, struct conn *c)
{
    CHECK_RL(rl_recv(loop, c->fd, on_recv, c, NULL));
    c->receiving = 1;
}

/* Hands the queue to a send, unless one is out already (or the connection is full or closing). */
static void flush(rl_loop *loop, struct conn *c)
{
    struct buf swap;
    if (c->sending.len > 0 || c->queue.len == 0 || c->closing || c->inflight_count == MAX_INFLIGHT)
        return;
    swap = c->sending;
    c->sending = c->queue;
    c->queue = swap;
    c->queue.len = 0;
    CHECK_RL(rl_send(loop, c->fd, c->sending.data, c->sending.len, on_send, c, NULL));
    push_inflight(c, QUEUE_SEND);
}

/* Sends received bytes straight from the loop's buffer, keeping it until the send's callback;
 * returns 0 when the bytes must be copied instead. */
static int send_in_place(rl_loop *loop, struct conn *c, const rl_outcome *o)
{
    struct server *server = c->server;
    int id;
    if (c->queue.len > 0 || c->inflight_count == MAX_INFLIGHT ||
        server->kept_buffers >= server->buffer_count / 2)
        return 0;
    id = rl_recv_keep(loop, o);
    if (id == -ENOENT)
        return 0; /* bytes the loop delivers from a copy (after a cancelled receive) */
    CHECK_RL(id);
    server->kept_buffers++;
    CHECK_RL(rl_send(loop, c->fd, o->bytes, o->nbytes, on_send, c, NULL));
    push_inflight(c, id);
    return 1;
}

static void on_recv(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct conn *c = data;
    if (o->nbytes > 0) {
        if (c->queue.len + o->nbytes > MAX_QUEUED) {
            fprintf(stderr, "echo_server: peer does not read its echo, dropping it\n");
            start_close(loop, c);
            return;
        }
        if (!send_in_place(loop, c, o)) {
            append(&c->queue, o->bytes, o->nbytes);
            flush(loop, c);
        }
    }
    if (!(o->flags & RL_EV_MORE) && c->receiving) {
        c->receiving = 0;
        if (o->result == 0 && (c->inflight_count > 0 || c->queue.len > 0))
            c->eof = 1; /* echo the rest first (on_send closes) */
        else
            start_close(loop, c);
    }
}

static void on_send(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct conn *c = data;
    int entry = pop_inflight(c);
    if (entry == QUEUE_SEND) {
        c->sending.len = 0;
    } else {
        CHECK_RL(rl_buffer_release(loop, (uint32_t)entry));
        c->server->kept_buffers--;
    }
    if (c->closing) {
        maybe_free(c);
        return;
    }
    if (o->result < 0) {
        start_close(loop, c);
        return;
    }
    flush(loop, c);
    if (c->eof && c->inflight_count == 0)
        start_close(loop, c);
}

static void on_close(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct conn *c = data;
    (void)loop;
    (void)o;
    c->close_done = 1;
    maybe_free(c);
}

static void on_accept(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct server *server = data;
    struct conn *c;
    if (o->result < 0) {
        if (o->result != -ECANCELED)
            fprintf(stderr, "accept: %s\n", rl_strerror(o->result));
        return;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(o->result);
        return;
    }
    c->server = server;
    c->fd = o->result;
    c->next = server->conns;
    if (c->next)
        c->next->prev = c;
    server->conns = c;
    server->accepted++;
    start_recv(loop, c);
}

static void on_stop_signal(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct server *server = data;
    struct conn *c;
    if (server->stopping || o->result < 0)
        return;
    server->stopping = 1;
    fprintf(stderr, "echo_server: signal %d, closing %s connections\n", o->result,
            server->conns ? "all" : "no");
    CHECK_RL(rl_cancel(loop, server->accept_op));
    CHECK_RL(rl_signal_stop(loop, SIGINT));
    CHECK_RL(rl_signal_stop(loop, SIGTERM));
    for (c = server->conns; c != NULL; c = c->next)
        start_close(loop, c);
    /* Nothing else is registered: rl_run() returns once the last close has completed. */
}

int main(int argc, char **argv)
{
    struct server server;
    rl_loop *loop;
    rl_options opts;
    int port = parse_port(argc, argv);

    signal(SIGPIPE, SIG_IGN);
    memset(&server, 0, sizeof server);
    /* This program runs its loop on the thread that creates and frees it: say so, which lets
     * the io_uring backend bind its ring to that thread (SINGLE_ISSUER + DEFER_TASKRUN). */
    rl_options_init(&opts);
    opts.flags |= RL_OPT_SINGLE_THREAD;
    CHECK_RL(rl_loop_new(&opts, &loop));
    CHECK_RL(rl_buffers(loop, NULL, NULL, &server.buffer_count));
    CHECK_RL(rl_signal_start(loop, SIGINT, on_stop_signal, &server));
    CHECK_RL(rl_signal_start(loop, SIGTERM, on_stop_signal, &server));
    server.listen_fd = listen_tcp(port);
    CHECK_RL(rl_accept(loop, server.listen_fd, on_accept, &server, &server.accept_op));

    CHECK_RL(rl_run(loop, RL_RUN_DEFAULT));

    fprintf(stderr, "echo_server: served %lu connections on %s, clean exit\n", server.accepted,
            rl_loop_backend(loop));
    CHECK_RL(rl_loop_free(loop));
    close(server.listen_fd);
    return server.conns == NULL ? 0 : 1;
}
