/* no_uring: run a command with io_uring unavailable, the way a locked-down container or a
 * hardened kernel presents it.
 *
 *   no_uring COMMAND [ARGS...]
 *
 * Installs a seccomp filter that makes io_uring_setup(2) fail with EPERM (every other system call
 * is allowed), then execs COMMAND. The filter is inherited by every child and thread of COMMAND
 * and cannot be removed, but it affects only this process tree: nothing global
 * (kernel.io_uring_disabled) is touched, so tests running beside it are unaffected. */
#define _GNU_SOURCE

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "no_uring: add the AUDIT_ARCH_* value for this architecture"
#endif

static int deny_io_uring_setup(void)
{
    struct sock_filter program[] = {
        /* A system call of another ABI (e.g. 32-bit) has other numbers: let it through. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fprog = {
        .len = (unsigned short)(sizeof program / sizeof program[0]),
        .filter = program,
    };
    /* Required to install a filter without CAP_SYS_ADMIN; also keeps exec from gaining
     * privileges, which a test runner never needs. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("no_uring: prctl(PR_SET_NO_NEW_PRIVS)");
        return -1;
    }
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
        perror("no_uring: seccomp(SECCOMP_SET_MODE_FILTER)");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s COMMAND [ARGS...]\n", argv[0]);
        return 2;
    }
    if (deny_io_uring_setup() != 0)
        return 1;
    /* Prove the filter is in force before running anything under it. */
    if (syscall(__NR_io_uring_setup, 1, NULL) != -1 || errno != EPERM) {
        fprintf(stderr, "no_uring: io_uring_setup is still reachable (errno %d: %s)\n", errno,
                strerror(errno));
        return 1;
    }
    execvp(argv[1], argv + 1);
    fprintf(stderr, "no_uring: cannot run %s: %s\n", argv[1], strerror(errno));
    return 127;
}
