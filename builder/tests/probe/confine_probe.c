/* Tries the calls berth's seccomp filter decides on and prints one line per
 * call: its name, then "ok" or the errno's name. Built static by
 * builder/tests/seccomp_crun.rs and run inside a container by crun. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long result, int err) {
    if (result >= 0) {
        printf("%s ok\n", name);
    } else if (err == EPERM) {
        printf("%s EPERM\n", name);
    } else if (err == ENOSYS) {
        printf("%s ENOSYS\n", name);
    } else {
        printf("%s errno %d\n", name, err);
    }
}

/* clone(2) without a new stack (the child runs on a copy, as after fork) and
 * waits for the child, which exits at once. */
static void try_clone(const char *name, unsigned long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    int err = errno;
    if (pid == 0) {
        _exit(0);
    }
    if (pid > 0) {
        waitpid((pid_t)pid, 0, 0);
    }
    report(name, pid, err);
}

/* unshare(2) in a child, so the probe's own namespaces stay as they are; the
 * child's exit status carries the errno. */
static void try_unshare(const char *name, unsigned long flags) {
    pid_t pid = fork();
    if (pid == 0) {
        long r = syscall(SYS_unshare, flags);
        _exit(r == 0 ? 0 : errno);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 255;
    report(name, code == 0 ? 0 : -1, code);
}

struct clone_args_v0 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

int main(void) {
    long r;
    try_unshare("unshare-newuser", CLONE_NEWUSER);
    try_unshare("unshare-newns", CLONE_NEWNS);
    try_clone("clone-plain", 0);
    try_clone("clone-newns", CLONE_NEWNS);
    try_clone("clone-newuser", CLONE_NEWUSER);
    struct clone_args_v0 args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    r = syscall(SYS_clone3, &args, sizeof args);
    int err = errno;
    if (r == 0) {
        _exit(0);
    }
    if (r > 0) {
        waitpid((pid_t)r, 0, 0);
    }
    report("clone3", r, err);
    unsigned char params[120];
    memset(params, 0, sizeof params);
    r = syscall(SYS_io_uring_setup, 1, params);
    report("io_uring_setup", r, errno);
    /* KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING, not created. */
    r = syscall(SYS_keyctl, 0, -3, 0);
    report("keyctl", r, errno);
    unsigned char attr[128];
    memset(attr, 0, sizeof attr);
    r = syscall(SYS_bpf, 0, attr, sizeof attr);
    report("bpf", r, errno);
    memset(attr, 0, sizeof attr);
    r = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
    report("perf_event_open", r, errno);
    r = syscall(SYS_personality, 0xffffffffUL);
    report("personality-query", r, errno);
    r = syscall(SYS_personality, 0x0006UL); /* PER_BSD */
    report("personality-bsd", r, errno);
    fflush(stdout);
    return 0;
}
