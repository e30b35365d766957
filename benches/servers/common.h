/* Shared start-up code of the reference echo servers: argument parsing, the listening socket,
 * the "listening on PORT" line, and stop-on-signal flags. Every server here takes the port as
 * argv[1] (0 picks a free one; the line printed names the real port) and runs until SIGINT or
 * SIGTERM. Header-only so that each server stays one translation unit. */
#ifndef RINGLOOP_BENCH_COMMON_H
#define RINGLOOP_BENCH_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static inline void on_stop_signal(int signo)
{
    (void)signo;
    stop_requested = 1;
}

/* SIGINT/SIGTERM set stop_requested and interrupt the blocking wait (no SA_RESTART), so the loop
 * sees EINTR and checks the flag. SIGPIPE is ignored: a peer that vanished mid-write is an EPIPE
 * error on that connection, not the death of the server. */
static inline void install_stop_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static inline int parse_port(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        exit(2);
    }
    char *end = NULL;
    errno = 0;
    long port = strtol(argv[1], &end, 10);
    if (errno != 0 || end == argv[1] || *end != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "%s: invalid port '%s' (expected 0..65535)\n", argv[0], argv[1]);
        exit(2);
    }
    return (int)port;
}

static inline void die(const char *what)
{
    perror(what);
    exit(1);
}

/* A non-blocking (when asked), close-on-exec TCP listener on 127.0.0.1:port. */
static inline int open_listener(int port, int nonblocking)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("setsockopt(SO_REUSEADDR)");
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(fd, 4096) < 0)
        die("listen");
    return fd;
}

static inline void announce(int listen_fd)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    if (getsockname(listen_fd, (struct sockaddr *)&addr, &len) < 0)
        die("getsockname");
    printf("listening on %d\n", ntohs(addr.sin_port));
    fflush(stdout);
}

static inline void set_nodelay(int fd)
{
    int one = 1;
    /* Best effort: a connection that already died fails here and is reaped by its next read. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

#endif
