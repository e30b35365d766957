/* Shared bits of the libuv micro-benchmarks, the C counterparts of the criterion benches in
 * benches/benches/ (same names as libuv's own benchmarks). Each prints one line per measured
 * quantity in the form "NAME: VALUE UNIT (detail)" and takes --quick for a short smoke run. */
#ifndef RINGLOOP_BENCH_MICRO_H
#define RINGLOOP_BENCH_MICRO_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define CHECK(expr)                                                                   \
    do {                                                                              \
        int check_rc_ = (expr);                                                       \
        if (check_rc_ < 0) {                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,             \
                    uv_strerror(check_rc_));                                          \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static inline int quick_mode(int argc, char **argv)
{
    if (argc == 1)
        return 0;
    if (argc == 2 && strcmp(argv[1], "--quick") == 0)
        return 1;
    fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
    exit(2);
}

static inline double seconds_since(uint64_t start_ns)
{
    return (double)(uv_hrtime() - start_ns) / 1e9;
}

#endif
