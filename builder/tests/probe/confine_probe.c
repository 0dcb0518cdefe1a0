/* Tries the calls berth's seccomp filter decides on and prints one line per
 * call: its name, then "ok" or the errno's name. Then what the container's
 * process is: its capability sets, no-new-privileges and seccomp mode (from
 * /proc/self/status), and for each argument `mask:PATH` or `ro:PATH` whether
 * PATH is masked (/dev/null or an empty folder) and whether it is read-only,
 * and the size of /tmp. Built static by builder/tests/seccomp_crun.rs and run
 * inside a container by crun. Every call is harmless when it succeeds: bad
 * magic numbers, NULL arguments, nothing to change. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
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

/* mount(2) of a small tmpfs, in a child and (where unshare works) in a mount
 * namespace of its own, so the probe's own mounts stay as they are. */
static void try_mount(void) {
    pid_t pid = fork();
    if (pid == 0) {
        syscall(SYS_unshare, CLONE_NEWNS);
        long r = mount("none", "/tmp", "tmpfs", MS_NOSUID, "size=64k");
        _exit(r == 0 ? 0 : errno);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 255;
    report("mount-SYS_ADMIN", code == 0 ? 0 : -1, code);
}

/* The lines of /proc/self/status that say what confines the process. */
static void status(void) {
    FILE *file = fopen("/proc/self/status", "r");
    char line[256];
    if (!file) {
        printf("status errno %d\n", errno);
        return;
    }
    while (fgets(line, sizeof line, file)) {
        static const char *keys[] = {"CapInh:", "CapPrm:", "CapEff:", "CapBnd:",
                                     "CapAmb:", "NoNewPrivs:", "Seccomp:"};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            size_t n = strlen(keys[i]);
            if (strncmp(line, keys[i], n) == 0) {
                char *value = line + n;
                value += strspn(value, " \t");
                value[strcspn(value, "\n")] = 0;
                printf("status-%.*s %s\n", (int)(n - 1), keys[i], value);
            }
        }
    }
    fclose(file);
}

/* A masked path, as runtimes mask them: a file bound to /dev/null, or a
 * folder covered by an empty (read-only) tmpfs. */
static void masked(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        printf("mask:%s %s\n", path, errno == ENOENT ? "absent" : "error");
        return;
    }
    if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 && minor(st.st_rdev) == 3) {
        printf("mask:%s masked\n", path);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        int entries = 0;
        struct dirent *entry;
        while (dir && (entry = readdir(dir))) {
            if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0) {
                entries++;
            }
        }
        if (dir) {
            closedir(dir);
        }
        printf("mask:%s %s\n", path, entries == 0 ? "masked" : "visible");
        return;
    }
    printf("mask:%s visible\n", path);
}

/* Whether the file system PATH is on is mounted read-only. */
static void read_only(const char *path) {
    struct statvfs fs;
    if (statvfs(path, &fs) != 0) {
        printf("ro:%s %s\n", path, errno == ENOENT ? "absent" : "error");
        return;
    }
    printf("ro:%s %s\n", path, (fs.f_flag & ST_RDONLY) ? "ro" : "rw");
}

int main(int argc, char **argv) {
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
    /* Denied whatever the capabilities (privileged aside). */
    r = syscall(SYS_userfaultfd, 0);
    report("userfaultfd", r, errno);
    r = syscall(SYS_swapon, 0, 0); /* EFAULT when let through */
    report("swapon", r, errno);
    r = syscall(SYS_kexec_file_load, -1, -1, 0, 0, 0); /* EBADF when let through */
    report("kexec_file_load", r, errno);
    try_mount();
    r = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    report("socket-vsock", r, errno);
    r = socket(AF_UNIX, SOCK_STREAM, 0);
    report("socket-unix", r, errno);

    /* The calls a capability lets through the filter (CAP_... in the name);
     * the kernel's answer when it does is whatever the harmless arguments get
     * (EINVAL, EBADF, EFAULT or success), never the filter's EPERM... unless
     * the kernel's own capability check says EPERM, which the test tells
     * apart by the capabilities the process holds. */
    r = syscall(SYS_reboot, 0, 0, 0, 0); /* bad magic: EINVAL */
    report("reboot-SYS_BOOT", r, errno);
    r = syscall(SYS_chroot, "/");
    report("chroot-SYS_CHROOT", r, errno);
    r = syscall(SYS_init_module, 0, 0, ""); /* no module: EFAULT or ENOEXEC */
    report("init_module-SYS_MODULE", r, errno);
    r = syscall(SYS_delete_module, "berth-no-such-module", 0);
    report("delete_module-SYS_MODULE", r, errno);
    r = syscall(SYS_acct, 0); /* accounting off (it is): nothing changes */
    report("acct-SYS_PACCT", r, errno);
    r = syscall(SYS_kcmp, getpid(), getpid(), 0 /* KCMP_FILE */, 0, 0);
    report("kcmp-SYS_PTRACE", r, errno);
    r = syscall(SYS_iopl, 0); /* the level it has */
    report("iopl-SYS_RAWIO", r, errno);
    r = syscall(SYS_ioperm, 0x80, 1, 0); /* turned off: nothing changes */
    report("ioperm-SYS_RAWIO", r, errno);
    r = syscall(SYS_settimeofday, 0, 0); /* neither time nor zone */
    report("settimeofday-SYS_TIME", r, errno);
    r = syscall(SYS_clock_adjtime, 0 /* CLOCK_REALTIME */, 0); /* EFAULT */
    report("clock_adjtime-SYS_TIME", r, errno);
    /* Only without a controlling terminal, where it hangs up nothing. */
    int tty = open("/dev/tty", O_RDONLY | O_NOCTTY);
    if (tty < 0) {
        r = syscall(SYS_vhangup);
        report("vhangup-SYS_TTY_CONFIG", r, errno);
    } else {
        close(tty);
        printf("vhangup-SYS_TTY_CONFIG skipped\n");
    }
    r = syscall(SYS_get_mempolicy, 0, 0, 0, 0, 0);
    report("get_mempolicy-SYS_NICE", r, errno);
    r = syscall(SYS_open_by_handle_at, -1, 0, 0); /* EBADF */
    report("open_by_handle_at-DAC_READ_SEARCH", r, errno);
    r = syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, 0, 0);
    report("syslog-SYSLOG", r, errno);

    status();
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "mask:", 5) == 0) {
            masked(argv[i] + 5);
        } else if (strncmp(argv[i], "ro:", 3) == 0) {
            read_only(argv[i] + 3);
        }
    }
    struct statvfs tmp;
    if (statvfs("/tmp", &tmp) == 0) {
        printf("tmp-size %llu\n", (unsigned long long)tmp.f_blocks * tmp.f_frsize);
        printf("tmp-mode %s\n", (tmp.f_flag & ST_RDONLY) ? "ro" : "rw");
    }
    printf("done probing\n");
    fflush(stdout);
    return 0;
}
