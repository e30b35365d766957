/* Datagrams and pipes in callback mode.
 *
 * UDP: rl_recvmsg gives each datagram with its sender (outcome->source). The server keeps the
 * loop buffer holding it (rl_recv_keep) and answers with rl_sendto straight from that buffer to
 * that sender, releasing the buffer in the send's callback: an echo without a copy. The client
 * sends with rl_sendto on its connected socket (no address) and receives its echoes with
 * rl_recvmsg too. 200 datagrams of 0 to 1,393 bytes go back and forth one at a time and must come
 * back byte for byte, in order; every send's callback must report the whole datagram sent.
 *
 * Pipes: rl_recv reads a pipe as it reads a socket, without ever blocking the loop (the read end
 * here is left blocking on purpose). A writer callback (rl_add_writer) fills the other end with
 * 1 MiB as room appears, then closes it; the receive checks every byte and sees the end of
 * stream.
 *
 * Exits 0 when every check holds. */
#define _GNU_SOURCE

#include <fcntl.h>

#include "example.h"

#define DATAGRAMS 200
#define PIPE_BYTES (1 << 20)

struct udp_test {
    int server, client;
    uint64_t server_op, client_op;
    int sent, echoed, sends_done;
    int failed;
    unsigned char out[1400]; /* the client's datagram in flight (one at a time) */
    size_t out_len;
};

/* What an echo's send callback needs: the test, and the kept buffer to release (-1: none). */
struct echo {
    struct udp_test *t;
    int buffer;
    size_t len;
};

struct pipe_test {
    int read_end, write_end;
    size_t written, received;
    int eof, unsupported, failed;
};

/* Datagram number i: i * 7 bytes (0 for the first), each byte (i + offset) & 0xff. */
static size_t datagram_len(int i)
{
    return (size_t)(i * 7 % 1400);
}

static void fill_datagram(unsigned char *buf, int i)
{
    size_t k, len = datagram_len(i);
    for (k = 0; k < len; k++)
        buf[k] = (unsigned char)(i + k);
}

/* A send's callback (client and server alike): the whole datagram must have gone. */
static void check_sent(struct udp_test *t, const rl_outcome *o, size_t len)
{
    if (o->result != (int32_t)len) {
        fprintf(stderr, "udp: a send of %zu bytes ended with %d (%s)\n", len, o->result,
                o->result < 0 ? rl_strerror(o->result) : "short");
        t->failed = 1;
    }
    t->sends_done++;
}

static void on_client_sent(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct udp_test *t = data;
    (void)loop;
    check_sent(t, o, t->out_len);
}

static void send_next(rl_loop *loop, struct udp_test *t)
{
    /* t->out stays unchanged until on_client_sent: the next datagram is only built after the
     * echo of this one, which comes after its send. */
    fill_datagram(t->out, t->sent);
    t->out_len = datagram_len(t->sent);
    CHECK_RL(rl_sendto(loop, t->client, t->out, t->out_len, NULL, 0, on_client_sent, t, NULL));
    t->sent++;
}

static void on_echo_sent(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct echo *e = data;
    check_sent(e->t, o, e->len);
    if (e->buffer >= 0)
        CHECK_RL(rl_buffer_release(loop, (uint32_t)e->buffer));
    free(e);
}

/* The server's receive: every datagram goes back to whoever sent it, from the loop buffer it
 * arrived in (an empty one has no buffer to keep). */
static void on_server_datagram(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct udp_test *t = data;
    struct echo *e;
    if (o->result < 0) {
        if (o->result != -ECANCELED) {
            fprintf(stderr, "udp server: %s\n", rl_strerror(o->result));
            t->failed = 1;
        }
        return;
    }
    e = malloc(sizeof *e);
    if (!e)
        die_errno("malloc");
    e->t = t;
    e->len = o->nbytes;
    e->buffer = -1;
    if (o->nbytes > 0) {
        e->buffer = rl_recv_keep(loop, o);
        CHECK_RL(e->buffer);
    }
    CHECK_RL(rl_sendto(loop, o->fd, o->bytes, o->nbytes, o->source, o->source_len, on_echo_sent,
                       e, NULL));
}

/* The client's receive: checks each echo, sends the next datagram, stops after the last. */
static void on_client_datagram(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct udp_test *t = data;
    unsigned char expected[1400];
    if (o->result < 0) {
        if (o->result != -ECANCELED) {
            fprintf(stderr, "udp client: %s\n", rl_strerror(o->result));
            t->failed = 1;
        }
        return;
    }
    fill_datagram(expected, t->echoed);
    if (o->nbytes != datagram_len(t->echoed) ||
        (o->nbytes > 0 && memcmp(o->bytes, expected, o->nbytes) != 0)) {
        fprintf(stderr, "udp: echo %d came back changed (%zu bytes)\n", t->echoed, o->nbytes);
        t->failed = 1;
    }
    t->echoed++;
    if (t->echoed < DATAGRAMS) {
        send_next(loop, t);
    } else {
        /* Nothing else keeps the loop alive once both receives are cancelled. */
        if (rl_cancel(loop, t->client_op) != 1 || rl_cancel(loop, t->server_op) != 1)
            t->failed = 1;
    }
}

static int udp_socket(void)
{
    struct sockaddr_in addr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die_errno("socket");
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die_errno("bind");
    return fd;
}

static int run_udp(rl_loop *loop)
{
    struct udp_test t;
    struct sockaddr_in server_addr;
    socklen_t len = sizeof server_addr;

    memset(&t, 0, sizeof t);
    t.server = udp_socket();
    t.client = udp_socket();
    if (getsockname(t.server, (struct sockaddr *)&server_addr, &len) < 0)
        die_errno("getsockname");
    if (connect(t.client, (struct sockaddr *)&server_addr, len) < 0)
        die_errno("connect");

    CHECK_RL(rl_recvmsg(loop, t.server, on_server_datagram, &t, &t.server_op));
    CHECK_RL(rl_recvmsg(loop, t.client, on_client_datagram, &t, &t.client_op));
    send_next(loop, &t);
    CHECK_RL(rl_run(loop, RL_RUN_DEFAULT));

    printf("udp: %d datagrams echoed, %d sends completed\n", t.echoed, t.sends_done);
    if (t.echoed != DATAGRAMS || t.sends_done != 2 * DATAGRAMS)
        t.failed = 1;
    /* A stream socket cannot receive datagrams: a clear error, nothing registered. */
    {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
            die_errno("socketpair");
        if (rl_recvmsg(loop, pair[0], on_server_datagram, &t, NULL) != -EOPNOTSUPP) {
            fprintf(stderr, "udp: rl_recvmsg on a stream socket was not refused\n");
            t.failed = 1;
        }
        close(pair[0]);
        close(pair[1]);
    }
    close(t.server);
    close(t.client);
    return t.failed;
}

/* The write end's writer callback: fills the pipe whenever it has room, then closes it. */
static void on_pipe_writable(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct pipe_test *t = data;
    unsigned char chunk[4096];
    size_t k;
    (void)o;
    while (t->written < PIPE_BYTES) {
        ssize_t n;
        for (k = 0; k < sizeof chunk; k++)
            chunk[k] = (unsigned char)((t->written + k) % 251);
        n = write(t->write_end, chunk, sizeof chunk);
        if (n < 0 && errno == EAGAIN)
            return; /* full: called again when the reader has made room */
        if (n <= 0)
            die_errno("write");
        t->written += (size_t)n;
    }
    rl_remove_writer(loop, t->write_end);
    close(t->write_end); /* the reader's end of stream */
}

static void on_pipe(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct pipe_test *t = data;
    size_t k;
    if (o->result == -ENOTSOCK && t->received == 0) {
        t->unsupported = 1; /* io_uring before Linux 6.7: stop writing too */
        rl_remove_writer(loop, t->write_end);
        close(t->write_end);
        return;
    }
    if (o->result < 0) {
        fprintf(stderr, "pipe: %s\n", rl_strerror(o->result));
        t->failed = 1;
        return;
    }
    if (o->result == 0) {
        t->eof = 1;
        return;
    }
    for (k = 0; k < o->nbytes; k++) {
        if (o->bytes[k] != (unsigned char)((t->received + k) % 251)) {
            fprintf(stderr, "pipe: byte %zu came changed\n", t->received + k);
            t->failed = 1;
            break;
        }
    }
    t->received += o->nbytes;
}

static int run_pipe(rl_loop *loop)
{
    struct pipe_test t;
    int ends[2];

    memset(&t, 0, sizeof t);
    if (pipe2(ends, O_CLOEXEC) < 0)
        die_errno("pipe2");
    t.read_end = ends[0]; /* left blocking on purpose: the loop must never block on it */
    t.write_end = ends[1];
    if (fcntl(t.write_end, F_SETFL, O_NONBLOCK) < 0)
        die_errno("fcntl");
    CHECK_RL(rl_recv(loop, t.read_end, on_pipe, &t, NULL));
    CHECK_RL(rl_add_writer(loop, t.write_end, on_pipe_writable, &t));
    CHECK_RL(rl_run(loop, RL_RUN_DEFAULT));
    close(t.read_end);
    if (t.unsupported) {
        printf("pipe: skipped, this kernel's io_uring cannot read pipes\n");
        return 0;
    }
    printf("pipe: %zu bytes read, end of stream %s\n", t.received, t.eof ? "seen" : "missing");
    return t.failed || !t.eof || t.received != PIPE_BYTES;
}

int main(void)
{
    rl_loop *loop;
    int failed;

    CHECK_RL(rl_loop_new(NULL, &loop));
    printf("udp_and_pipe on %s\n", rl_loop_backend(loop));
    failed = run_udp(loop);
    failed |= run_pipe(loop);
    CHECK_RL(rl_loop_free(loop));
    if (failed) {
        fprintf(stderr, "udp_and_pipe: FAIL\n");
        return 1;
    }
    printf("udp_and_pipe: all checks passed\n");
    return 0;
}
