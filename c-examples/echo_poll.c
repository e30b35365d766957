/* A TCP echo server in raw token mode: the program submits operations with its own tokens and
 * dispatches the events rl_poll() returns (what language bindings do).
 *
 *   echo_poll PORT      (0 picks a free port; prints "listening on PORT" when ready)
 *
 * Runs until SIGINT or SIGTERM, then closes every connection through the loop, frees the loop
 * and exits 0.
 *
 * Received bytes are echoed without a copy: the program keeps the loop-owned buffer they arrived
 * in (rl_buffer_keep), sends straight from it, and releases it at the send's event. Sends on one
 * socket complete in order, so a connection's in-flight sends form a FIFO. Copying takes over
 * when a connection already has MAX_INFLIGHT sends out or the program keeps half of the loop's
 * buffers (a peer that does not read its echo must not starve every other connection's
 * receives): those bytes go to a per-connection queue, sent as one buffer once the sends before
 * it are out, and newer bytes join the queue while it is not empty. A connection whose queue
 * grows past MAX_QUEUED is dropped. */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>

#include "example.h"

#define MAX_CONNS 4096
/* A peer that sends without reading its echo would make the output queue grow without bound:
 * past this many queued bytes the connection is dropped. (Receiving is not paused with a cancel
 * instead: on io_uring a cancelled multishot receive may already have taken bytes from the socket
 * that are then not delivered, which would corrupt the echoed stream.) */
#define MAX_QUEUED (64u << 20)
/* Sends one connection may have in flight (kept buffers plus at most one queue send). */
#define MAX_INFLIGHT 8
/* An in-flight entry that is the connection's queue send rather than a kept buffer. */
#define QUEUE_SEND (-1)

/* Token layout: kind in the low 8 bits, connection slot and generation above. */
enum kind { K_ACCEPT = 1, K_SIGNAL, K_RECV, K_SEND, K_CLOSE };

struct buf {
    unsigned char *data;
    size_t len, cap;
};

struct conn {
    unsigned gen;
    int fd;             /* -1 when the slot is free */
    int receiving;      /* a multishot recv is armed */
    int closing;        /* rl_op_close submitted */
    int close_done;     /* its event arrived */
    int eof;            /* the peer finished sending: close once everything is echoed */
    struct buf queue;   /* received and copied, not yet handed to a send */
    struct buf sending; /* owned by the in-flight queue send (len > 0) */
    /* In-flight sends, oldest first: a kept buffer's id, or QUEUE_SEND. */
    int inflight[MAX_INFLIGHT];
    int inflight_head, inflight_count;
};

static struct conn conns[MAX_CONNS];
static const uint8_t *buffer_base;
static uint32_t buffer_size, buffer_count;
static uint32_t kept_buffers; /* buffers kept by all connections together */

static uint64_t token_of(int slot, enum kind kind)
{
    return ((uint64_t)conns[slot].gen << 32) | ((uint64_t)slot << 8) | (uint64_t)kind;
}

static struct conn *conn_of(uint64_t token)
{
    unsigned slot = (unsigned)(token >> 8) & 0xffffffu;
    if (slot >= MAX_CONNS || conns[slot].fd < 0 || conns[slot].gen != (unsigned)(token >> 32))
        return NULL;
    return &conns[slot];
}

static void append(struct buf *b, const uint8_t *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (b->data == NULL) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
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

static void release(struct conn *c)
{
    free(c->queue.data);
    free(c->sending.data);
    memset(&c->queue, 0, sizeof c->queue);
    memset(&c->sending, 0, sizeof c->sending);
    c->inflight_head = c->inflight_count = 0;
    c->fd = -1;
    c->gen++;
}

static int slot_index(struct conn *c)
{
    return (int)(c - conns);
}

static void start_close(rl_loop *loop, struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->receiving = 0;
    CHECK_RL(rl_op_close(loop, c->fd, token_of(slot_index(c), K_CLOSE), NULL));
}

/* A connection slot is freed once its close completed and no send still reads its memory. */
static void maybe_release(struct conn *c)
{
    if (c->close_done && c->inflight_count == 0)
        release(c);
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
    CHECK_RL(rl_op_send(loop, c->fd, c->sending.data, c->sending.len, token_of(slot_index(c), K_SEND),
                        NULL));
    push_inflight(c, QUEUE_SEND);
}

/* Sends a received chunk straight from the loop's buffer, keeping it until the send's event;
 * returns 0 when the chunk must be copied instead. */
static int send_in_place(rl_loop *loop, struct conn *c, const rl_event *ev)
{
    if (c->queue.len > 0 || c->inflight_count == MAX_INFLIGHT || kept_buffers >= buffer_count / 2)
        return 0;
    CHECK_RL(rl_buffer_keep(loop, (uint32_t)ev->aux));
    kept_buffers++;
    CHECK_RL(rl_op_send(loop, c->fd, buffer_base + ev->aux * buffer_size, (size_t)ev->result,
                        token_of(slot_index(c), K_SEND), NULL));
    push_inflight(c, (int)ev->aux);
    return 1;
}

static void start_recv(rl_loop *loop, struct conn *c)
{
    CHECK_RL(rl_op_recv(loop, c->fd, token_of(slot_index(c), K_RECV), NULL));
    c->receiving = 1;
}

static void on_accept(rl_loop *loop, const rl_event *ev)
{
    int slot;
    if (ev->result < 0) {
        fprintf(stderr, "accept: %s\n", rl_strerror(ev->result));
        return;
    }
    for (slot = 0; slot < MAX_CONNS && conns[slot].fd >= 0; slot++)
        ;
    if (slot == MAX_CONNS) {
        close(ev->result); /* full: refuse the connection */
        return;
    }
    conns[slot].fd = ev->result;
    conns[slot].closing = conns[slot].close_done = conns[slot].eof = 0;
    start_recv(loop, &conns[slot]);
}

static void on_recv(rl_loop *loop, struct conn *c, const rl_event *ev)
{
    if (ev->result > 0) {
        if (c->queue.len + (size_t)ev->result > MAX_QUEUED) {
            fprintf(stderr, "echo_poll: peer does not read its echo, dropping it\n");
            start_close(loop, c);
            return;
        }
        if (!send_in_place(loop, c, ev)) {
            append(&c->queue, buffer_base + ev->aux * buffer_size, (size_t)ev->result);
            flush(loop, c);
        }
    }
    if (!(ev->flags & RL_EV_MORE) && c->receiving) {
        c->receiving = 0;
        if (ev->result == 0 && (c->inflight_count > 0 || c->queue.len > 0))
            c->eof = 1; /* echo what is queued, then close (on_send) */
        else
            start_close(loop, c);
    }
}

static void on_send(rl_loop *loop, struct conn *c, const rl_event *ev)
{
    int entry = pop_inflight(c);
    if (entry == QUEUE_SEND) {
        c->sending.len = 0;
    } else {
        CHECK_RL(rl_buffer_release(loop, (uint32_t)entry));
        kept_buffers--;
    }
    if (ev->result < 0) {
        start_close(loop, c);
        maybe_release(c);
        return;
    }
    if (c->closing) {
        maybe_release(c);
        return;
    }
    flush(loop, c);
    if (c->eof && c->inflight_count == 0)
        start_close(loop, c);
}

int main(int argc, char **argv)
{
    rl_loop *loop;
    rl_options opts;
    rl_event events[256];
    int port = parse_port(argc, argv), listen_fd, i, stopping = 0, open_conns;

    signal(SIGPIPE, SIG_IGN);
    for (i = 0; i < MAX_CONNS; i++)
        conns[i].fd = -1;
    /* This program runs its loop on the thread that creates and frees it: say so, which lets
     * the io_uring backend bind its ring to that thread (SINGLE_ISSUER + DEFER_TASKRUN). */
    rl_options_init(&opts);
    opts.flags |= RL_OPT_SINGLE_THREAD;
    CHECK_RL(rl_loop_new(&opts, &loop));
    CHECK_RL(rl_buffers(loop, &buffer_base, &buffer_size, &buffer_count));
    CHECK_RL(rl_op_signal(loop, SIGINT, K_SIGNAL, NULL));
    CHECK_RL(rl_op_signal(loop, SIGTERM, K_SIGNAL, NULL));
    listen_fd = listen_tcp(port);
    CHECK_RL(rl_op_accept(loop, listen_fd, K_ACCEPT, NULL));

    for (;;) {
        int n = rl_poll(loop, -1, events, sizeof events / sizeof events[0]);
        CHECK_RL(n);
        for (i = 0; i < n; i++) {
            const rl_event *ev = &events[i];
            struct conn *c;
            switch ((enum kind)(ev->token & 0xff)) {
            case K_ACCEPT:
                if (!stopping)
                    on_accept(loop, ev);
                else if (ev->result >= 0)
                    close(ev->result);
                break;
            case K_SIGNAL:
                if (!stopping) {
                    int slot;
                    stopping = 1;
                    CHECK_RL(rl_op_cancel_token(loop, K_ACCEPT));
                    for (slot = 0; slot < MAX_CONNS; slot++)
                        if (conns[slot].fd >= 0)
                            start_close(loop, &conns[slot]);
                }
                break;
            case K_RECV:
                if ((c = conn_of(ev->token)) != NULL && !c->closing)
                    on_recv(loop, c, ev);
                break;
            case K_SEND:
                if ((c = conn_of(ev->token)) != NULL)
                    on_send(loop, c, ev);
                break;
            case K_CLOSE:
                if ((c = conn_of(ev->token)) != NULL) {
                    c->close_done = 1;
                    maybe_release(c);
                }
                break;
            }
        }
        if (stopping) {
            for (open_conns = 0, i = 0; i < MAX_CONNS; i++)
                open_conns += conns[i].fd >= 0;
            if (open_conns == 0)
                break;
        }
    }
    CHECK_RL(rl_loop_free(loop));
    close(listen_fd);
    return 0;
}
