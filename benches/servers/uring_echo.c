/* Reference echo server: plain io_uring through liburing, one thread — the best a hand-written
 * C server does on this kernel.
 *
 * - one multishot accept on the listener;
 * - one multishot recv per connection, landing in a provided buffer ring (no buffer is tied to an
 *   idle connection);
 * - the received buffer itself is sent back (no copy) and returned to the ring when its send
 *   completes. One send per connection is in flight at a time, the rest wait in a per-connection
 *   FIFO, so echoed bytes keep their order even when a send has to wait for socket space;
 * - SINGLE_ISSUER + DEFER_TASKRUN: completions are processed only when we ask for them, in one
 *   io_uring_enter that also submits. */
#define _GNU_SOURCE
#include "common.h"

#include <liburing.h>
#include <stdint.h>
#include <sys/mman.h>

#define RING_ENTRIES 4096
#define BUF_GROUP 0
#define BUF_COUNT 1024 /* a power of two */
#define BUF_SIZE (64 * 1024) /* as ringloop's default: 16 KiB costs 100 KiB echoes ~1.8x */

enum op { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };

struct conn {
    int fd;
    int recv_armed;     /* a multishot recv is live */
    int recv_stalled;   /* the recv ended with ENOBUFS: re-arm once buffers come back */
    int closing;        /* EOF or error seen: close once the last send completes */
    int send_inflight;
    /* FIFO of received buffers waiting to be sent back, linked through next_buf[] */
    int queue_head, queue_tail;
    unsigned head_off;  /* bytes of the head buffer already sent */
    struct conn *next_stalled;
};

static struct io_uring ring;
static struct io_uring_buf_ring *buf_ring;
static char *buf_base;
static int buf_len[BUF_COUNT];  /* bytes received into each buffer */
static int next_buf[BUF_COUNT]; /* FIFO links */
static unsigned buffers_returned;
static struct conn *stalled;    /* connections waiting for buffers */

static uint64_t tag(void *ptr, enum op op) { return (uint64_t)(uintptr_t)ptr | (uint64_t)op; }
static enum op tag_op(uint64_t data) { return (enum op)(data & 7); }
static struct conn *tag_conn(uint64_t data) { return (struct conn *)(uintptr_t)(data & ~(uint64_t)7); }

static struct io_uring_sqe *get_sqe(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (sqe == NULL) {
        /* The submission queue is full: hand it to the kernel and take a fresh slot. */
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
        if (sqe == NULL)
            die("io_uring_get_sqe");
    }
    return sqe;
}

static void give_back_buffer(int bid)
{
    io_uring_buf_ring_add(buf_ring, buf_base + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(BUF_COUNT), (int)buffers_returned);
    buffers_returned++;
}

static void arm_accept(int listen_fd)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tag(NULL, OP_ACCEPT));
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUF_GROUP;
    io_uring_sqe_set_data64(sqe, tag(c, OP_RECV));
    c->recv_armed = 1;
}

static void send_head(struct conn *c)
{
    int bid = c->queue_head;
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_send(sqe, c->fd, buf_base + (size_t)bid * BUF_SIZE + c->head_off,
                       (size_t)buf_len[bid] - c->head_off, MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, tag(c, OP_SEND));
    c->send_inflight = 1;
}

static void maybe_free(struct conn *c)
{
    if (c->closing && !c->recv_armed && !c->send_inflight && !c->recv_stalled) {
        while (c->queue_head >= 0) {
            int bid = c->queue_head;
            c->queue_head = next_buf[bid];
            give_back_buffer(bid);
        }
        close(c->fd);
        free(c);
    }
}

static void on_accept(int listen_fd, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        arm_accept(listen_fd);
    if (cqe->res < 0) {
        if (cqe->res != -ECANCELED)
            fprintf(stderr, "accept: %s\n", strerror(-cqe->res));
        return;
    }
    int fd = cqe->res;
    set_nodelay(fd);
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->queue_head = c->queue_tail = -1;
    arm_recv(c);
}

static void on_recv(struct conn *c, struct io_uring_cqe *cqe)
{
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        c->recv_armed = 0;
    if (cqe->res > 0) {
        int bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        buf_len[bid] = cqe->res;
        next_buf[bid] = -1;
        if (c->queue_tail >= 0)
            next_buf[c->queue_tail] = bid;
        else
            c->queue_head = bid;
        c->queue_tail = bid;
        if (!c->send_inflight && !c->closing) {
            c->head_off = 0;
            send_head(c);
        }
        if (c->closing)
            maybe_free(c); /* a send failed earlier: this data is not echoed */
        else if (!more)
            arm_recv(c); /* the kernel ended the multishot (e.g. CQ overflow): keep receiving */
        return;
    }
    if (cqe->res == -ENOBUFS && !c->closing) {
        /* Every buffer is queued for sending somewhere: wait until sends return some. */
        if (!c->recv_stalled) {
            c->recv_stalled = 1;
            c->next_stalled = stalled;
            stalled = c;
        }
        return;
    }
    /* EOF or an error: finish the sends already queued, then close. */
    c->closing = 1;
    maybe_free(c);
}

static void on_send(struct conn *c, struct io_uring_cqe *cqe)
{
    c->send_inflight = 0;
    if (cqe->res < 0) {
        c->closing = 1;
        if (c->recv_armed) {
            struct io_uring_sqe *sqe = get_sqe();
            io_uring_prep_cancel_fd(sqe, c->fd, 0);
            io_uring_sqe_set_data64(sqe, 0);
        }
        maybe_free(c);
        return;
    }
    int bid = c->queue_head;
    c->head_off += (unsigned)cqe->res;
    if (c->head_off < (unsigned)buf_len[bid]) {
        send_head(c); /* short send: the rest of the same buffer */
        return;
    }
    c->queue_head = next_buf[bid];
    if (c->queue_head < 0)
        c->queue_tail = -1;
    give_back_buffer(bid);
    c->head_off = 0;
    if (c->queue_head >= 0)
        send_head(c);
    else
        maybe_free(c);
}

static void setup_buffers(void)
{
    size_t ring_bytes = sizeof(struct io_uring_buf) * BUF_COUNT;
    void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap(buffer ring)");
    buf_ring = mem;
    io_uring_buf_ring_init(buf_ring);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)buf_ring, .ring_entries = BUF_COUNT, .bgid = BUF_GROUP};
    int rc = io_uring_register_buf_ring(&ring, &reg, 0);
    if (rc < 0) {
        fprintf(stderr, "io_uring_register_buf_ring: %s\n", strerror(-rc));
        exit(1);
    }
    buf_base = mmap(NULL, (size_t)BUF_COUNT * BUF_SIZE, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (buf_base == MAP_FAILED)
        die("mmap(buffers)");
    for (int bid = 0; bid < BUF_COUNT; bid++)
        give_back_buffer(bid);
    io_uring_buf_ring_advance(buf_ring, (int)buffers_returned);
    buffers_returned = 0;
}

int main(int argc, char **argv)
{
    int port = parse_port(argc, argv);
    install_stop_handlers();
    int listen_fd = open_listener(port, 0);

    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int rc = io_uring_queue_init_params(RING_ENTRIES, &ring, &params);
    if (rc < 0) {
        fprintf(stderr, "io_uring_queue_init_params: %s\n", strerror(-rc));
        return 1;
    }
    setup_buffers();
    arm_accept(listen_fd);
    announce(listen_fd);

    while (!stop_requested) {
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-rc));
            return 1;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t data = io_uring_cqe_get_data64(cqe);
            seen++;
            switch (tag_op(data)) {
            case OP_ACCEPT: on_accept(listen_fd, cqe); break;
            case OP_RECV: on_recv(tag_conn(data), cqe); break;
            case OP_SEND: on_send(tag_conn(data), cqe); break;
            default: break; /* cancel requests */
            }
        }
        io_uring_cq_advance(&ring, seen);
        if (buffers_returned > 0) {
            io_uring_buf_ring_advance(buf_ring, (int)buffers_returned);
            buffers_returned = 0;
            while (stalled != NULL) {
                struct conn *c = stalled;
                stalled = c->next_stalled;
                c->recv_stalled = 0;
                if (c->closing)
                    maybe_free(c);
                else
                    arm_recv(c);
            }
        }
    }
    io_uring_queue_exit(&ring);
    close(listen_fd);
    return 0;
}
