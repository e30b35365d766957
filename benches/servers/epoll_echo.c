/* Reference echo server: plain level-triggered epoll, one thread.
 *
 * Per round trip: one epoll_wait, one read, one write. Data is written straight back from a
 * shared read buffer; only when the socket will not take it all is the remainder copied into the
 * connection's backlog, and the connection then stops reading (interest switches to EPOLLOUT)
 * until the backlog is written — backpressure instead of unbounded buffering. */
#define _GNU_SOURCE
#include "common.h"

#include <sys/epoll.h>

#define READ_BUFFER (64 * 1024)
#define MAX_EVENTS 256

struct conn {
    int fd;
    char *backlog;         /* bytes read but not yet written back */
    size_t backlog_len;
    size_t backlog_off;
    size_t backlog_cap;
};

static char read_buffer[READ_BUFFER];

static void conn_close(int epfd, struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->backlog);
    free(c);
}

static int set_interest(int epfd, struct conn *c, unsigned events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    return epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes the backlog; returns 1 when it is empty, 0 when the socket is full, -1 on error. */
static int drain_backlog(struct conn *c)
{
    while (c->backlog_off < c->backlog_len) {
        ssize_t n = write(c->fd, c->backlog + c->backlog_off, c->backlog_len - c->backlog_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->backlog_off += (size_t)n;
    }
    c->backlog_off = c->backlog_len = 0;
    return 1;
}

static int keep_backlog(struct conn *c, const char *data, size_t len)
{
    if (len > c->backlog_cap) {
        char *grown = realloc(c->backlog, len);
        if (grown == NULL)
            return -1;
        c->backlog = grown;
        c->backlog_cap = len;
    }
    memcpy(c->backlog, data, len);
    c->backlog_len = len;
    c->backlog_off = 0;
    return 0;
}

/* Echoes one read's worth; returns -1 when the connection is finished. */
static int on_readable(int epfd, struct conn *c)
{
    ssize_t n;
    do {
        n = read(c->fd, read_buffer, sizeof read_buffer);
    } while (n < 0 && errno == EINTR);
    if (n == 0)
        return -1;
    if (n < 0)
        return errno == EAGAIN ? 0 : -1;
    size_t off = 0;
    while (off < (size_t)n) {
        ssize_t w = write(c->fd, read_buffer + off, (size_t)n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return -1;
            if (keep_backlog(c, read_buffer + off, (size_t)n - off) < 0)
                return -1;
            return set_interest(epfd, c, EPOLLOUT);
        }
        off += (size_t)w;
    }
    return 0;
}

static void accept_all(int epfd, int listen_fd)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                perror("accept4");
            return;
        }
        set_nodelay(fd);
        struct conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            perror("epoll_ctl");
            close(fd);
            free(c);
        }
    }
}

int main(int argc, char **argv)
{
    int port = parse_port(argc, argv);
    install_stop_handlers();
    int listen_fd = open_listener(port, 1);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    /* The listener is told apart from connections by a NULL data pointer. */
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &lev) < 0)
        die("epoll_ctl(listener)");
    announce(listen_fd);

    struct epoll_event events[MAX_EVENTS];
    while (!stop_requested) {
        int ready = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                accept_all(epfd, listen_fd);
                continue;
            }
            int status;
            if (events[i].events & EPOLLOUT) {
                status = drain_backlog(c);
                if (status == 1)
                    status = set_interest(epfd, c, EPOLLIN);
            } else {
                status = on_readable(epfd, c);
            }
            if (status < 0)
                conn_close(epfd, c);
        }
    }
    close(epfd);
    close(listen_fd);
    return 0;
}
