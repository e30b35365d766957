/* Helpers shared by the ringloop C examples: argument parsing, a listening TCP socket, and a
 * check macro that reports a failed library call with rl_strerror(). Header-only so that every
 * example stays one translation unit; it uses nothing but libc and ringloop.h. */
#ifndef RINGLOOP_EXAMPLE_H
#define RINGLOOP_EXAMPLE_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ringloop.h"

/* Aborts the example with a readable message when a ringloop call fails (returns < 0). */
#define CHECK_RL(call)                                                                       \
    do {                                                                                     \
        int check_rc_ = (call);                                                              \
        if (check_rc_ < 0) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                    \
                    rl_strerror(check_rc_));                                                 \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static inline void die_errno(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

/* The PORT argument: 0..65535, 0 picks a free port. */
static inline int parse_port(int argc, char **argv)
{
    char *end = NULL;
    long port;
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        exit(2);
    }
    errno = 0;
    port = strtol(argv[1], &end, 10);
    if (errno != 0 || end == argv[1] || *end != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "%s: invalid port '%s' (expected 0..65535)\n", argv[0], argv[1]);
        exit(2);
    }
    return (int)port;
}

/* A non-blocking, close-on-exec TCP socket listening on 127.0.0.1:port. Prints
 * "listening on PORT" (the real port when 0 was asked for) and flushes stdout, so a test or a
 * benchmark driver can wait for that line. */
static inline int listen_tcp(int port)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die_errno("socket");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die_errno("setsockopt(SO_REUSEADDR)");
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die_errno("bind");
    if (listen(fd, 1024) < 0)
        die_errno("listen");
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
        die_errno("getsockname");
    printf("listening on %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    return fd;
}

#endif /* RINGLOOP_EXAMPLE_H */
