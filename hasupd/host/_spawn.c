/* hasupd.host._spawn: start a program with clone3(), born inside its cgroup, no Python in the child.
 *
 * Why C: a child that joins its cgroup after fork (a write to cgroup.procs) waits for the kernel's
 * cgroup migration, an RCU grace period (~15 ms); clone3(CLONE_INTO_CGROUP) creates it there. Any
 * per-child work done in Python (subprocess's preexec_fn) also forces a full fork of hasupd. Here the
 * child shares hasupd's memory (CLONE_VM | CLONE_VFORK, as glibc's posix_spawn does) on a stack of its
 * own, runs only system calls, and execs; the calling thread sleeps until then.
 *
 * The child, in this order: every signal handler back to SIG_DFL, setsid, the fds (target i gets
 * fds[i], everything else is closed), chdir, rlimits, umask, nice, ioprio, oom_score_adj, groups, gid,
 * uid, no_new_privs, the signal mask of the caller, and execve. The first failing step is reported
 * through a close-on-exec pipe as (step, errno) and raised as ChildError(errno, strerror, step).
 *
 * Rules for the child (it runs in hasupd's address space): no malloc, no locks, no Python, and raw
 * system calls for setgroups/setresgid/setresuid (glibc's wrappers signal every thread of the process
 * to change their credentials too, which are hasupd's threads here).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/* The kernel's struct clone_args up to the cgroup field (CLONE_ARGS_SIZE_VER2, Linux 5.7). */
struct hasupd_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

#define CHILD_STACK_SIZE (256 * 1024)
#define MAX_RLIMITS 16
#define MAX_FDS 1024 /* stdio and the held sockets a service is handed */

/* Steps, reported with the errno of the one that failed. */
enum step {
    STEP_SIGNALS = 1, STEP_SETSID, STEP_FDS, STEP_CHDIR, STEP_RLIMIT, STEP_UMASK, STEP_NICE,
    STEP_IOPRIO, STEP_OOM, STEP_SETGROUPS, STEP_SETGID, STEP_SETUID, STEP_NO_NEW_PRIVS, STEP_EXEC,
};
static const char *const step_names[] = {
    "", "signals", "setsid", "fds", "chdir", "rlimit", "umask", "nice", "ioprio", "oom_score_adj",
    "setgroups", "setgid", "setuid", "no_new_privs", "exec",
};

struct rlimit_setting {
    int resource;
    struct rlimit value;
};

/* Everything the child needs, prepared by the parent (the child only reads it). */
struct plan {
    const char *exe;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    const int *fds;            /* target i <- fds[i] */
    int nfds;
    int err_fd;                /* write end of the error pipe, >= nfds, close-on-exec */
    int max_fd;                /* for the close loop when close_range is missing */
    long uid, gid;             /* -1: keep (long: ids go up to 4294967294) */
    const gid_t *groups;       /* NULL: keep */
    int ngroups;
    struct rlimit_setting rlimits[MAX_RLIMITS];
    int nrlimits;
    int umask;                 /* -1: keep */
    int has_nice, nice;
    int ioprio;                /* -1: keep */
    const char *oom_score_adj; /* NULL: keep */
    int no_new_privs;
    char **pid_slots;          /* env entries "NAME=" followed by room for the child's pid */
    int npid_slots;
    sigset_t old_mask;
};

static void report(const struct plan *p, int step, int err)
{
    int msg[2] = {step, err};
    ssize_t ignored = write(p->err_fd, msg, sizeof msg);
    (void)ignored;
    syscall(SYS_exit, 127);
    for (;;) {
    }
}

/* Close every fd >= low but err_fd, in the child: no malloc, so /proc/self/fd is read with getdents64
 * into a buffer on the stack (as glibc's closefrom fallback does). */
static int close_listed(const struct plan *p, int low)
{
    int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    char buf[4096];
    for (;;) {
        long got = syscall(SYS_getdents64, dir, buf, sizeof buf);
        if (got <= 0) {
            close(dir);
            return got == 0 ? 0 : -1;
        }
        for (long off = 0; off < got;) {
            struct linux_dirent64 {
                uint64_t d_ino;
                int64_t d_off;
                unsigned short d_reclen;
                unsigned char d_type;
                char d_name[];
            } *entry = (void *)(buf + off);
            off += entry->d_reclen;
            int fd = 0;
            const char *c = entry->d_name;
            if (*c < '0' || *c > '9')
                continue;
            for (; *c >= '0' && *c <= '9'; c++)
                fd = fd * 10 + (*c - '0');
            if (fd >= low && fd != p->err_fd && fd != dir)
                close(fd);
        }
    }
}

static void close_above(const struct plan *p, int low)
{
    /* Keep err_fd (close-on-exec) open until exec. close_range: Linux 5.9. */
    if ((p->err_fd == low || syscall(SYS_close_range, low, p->err_fd - 1, 0) == 0) &&
        syscall(SYS_close_range, p->err_fd + 1, ~0U, 0) == 0)
        return;
    if (close_listed(p, low) == 0)
        return;
    for (int fd = low; fd <= p->max_fd; fd++)
        if (fd != p->err_fd)
            close(fd);
}

static void put_pid(char *slot, long pid)
{
    char digits[24];
    int n = 0;
    char *end = slot + strlen(slot);
    do {
        digits[n++] = (char)('0' + pid % 10);
        pid /= 10;
    } while (pid > 0);
    while (n > 0)
        *end++ = digits[--n];
    *end = '\0';
}

static int child_main(void *arg)
{
    const struct plan *p = arg;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    /* Signals stay blocked until exec; a handler of hasupd's must never run here. */
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL); /* EINVAL for SIGKILL, SIGSTOP and glibc's own: fine */

    if (setsid() < 0)
        report(p, STEP_SETSID, errno);

    /* Sources below nfds could be overwritten by an earlier dup2: lift them first. */
    int fds[MAX_FDS];
    for (int i = 0; i < p->nfds; i++) {
        fds[i] = p->fds[i];
        if (fds[i] >= 0 && fds[i] < p->nfds && fds[i] != i) {
            fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, p->nfds);
            if (fds[i] < 0)
                report(p, STEP_FDS, errno);
        }
    }
    for (int i = 0; i < p->nfds; i++) {
        if (fds[i] == i) {
            int flags = fcntl(i, F_GETFD);
            if (flags < 0 || fcntl(i, F_SETFD, flags & ~FD_CLOEXEC) < 0)
                report(p, STEP_FDS, errno);
        } else if (fds[i] >= 0 && dup2(fds[i], i) < 0) {
            report(p, STEP_FDS, errno);
        }
    }
    close_above(p, p->nfds);

    if (p->cwd != NULL && chdir(p->cwd) < 0)
        report(p, STEP_CHDIR, errno);
    for (int i = 0; i < p->nrlimits; i++)
        if (setrlimit(p->rlimits[i].resource, &p->rlimits[i].value) < 0)
            report(p, STEP_RLIMIT, errno);
    if (p->umask >= 0)
        umask((mode_t)p->umask);
    if (p->has_nice && syscall(SYS_setpriority, PRIO_PROCESS, 0, p->nice) < 0)
        report(p, STEP_NICE, errno);
    if (p->ioprio >= 0 && syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, p->ioprio) < 0)
        report(p, STEP_IOPRIO, errno);
    if (p->oom_score_adj != NULL) {
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        size_t len = strlen(p->oom_score_adj);
        if (fd < 0 || write(fd, p->oom_score_adj, len) != (ssize_t)len)
            report(p, STEP_OOM, errno);
        close(fd);
    }
    if (p->groups != NULL && syscall(SYS_setgroups, p->ngroups, p->groups) < 0)
        report(p, STEP_SETGROUPS, errno);
    if (p->gid >= 0 && syscall(SYS_setresgid, p->gid, p->gid, p->gid) < 0)
        report(p, STEP_SETGID, errno);
    if (p->uid >= 0 && syscall(SYS_setresuid, p->uid, p->uid, p->uid) < 0)
        report(p, STEP_SETUID, errno);
    if (p->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        report(p, STEP_NO_NEW_PRIVS, errno);

    if (p->npid_slots > 0) {
        long pid = syscall(SYS_getpid);
        for (int i = 0; i < p->npid_slots; i++)
            put_pid(p->pid_slots[i], pid);
    }
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &p->old_mask, NULL, _NSIG / 8);
    execve(p->exe, p->argv, p->envp);
    report(p, STEP_EXEC, errno);
    return 127;
}

#if defined(__x86_64__)
#define SHARES_MEMORY 1
/* clone3 with a child that starts on its own stack and calls fn(arg), then exits: the child must
 * never return through the caller's frames, which belong to the (sleeping) parent. */
static long clone3_call(struct hasupd_clone_args *args, int (*fn)(void *), void *arg)
{
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ __volatile__(
        "syscall\n\t"
        "testq %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xorl %%ebp, %%ebp\n\t"
        "movq %%r13, %%rdi\n\t"
        "callq *%%r12\n\t"
        "movl %%eax, %%edi\n\t"
        "movl $60, %%eax\n\t" /* SYS_exit */
        "syscall\n\t"
        "ud2\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(sizeof *args), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory", "cc");
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}
#else
#define SHARES_MEMORY 0
/* Elsewhere: a copy of the address space (as fork does), so the child may return normally. */
static long clone3_call(struct hasupd_clone_args *args, int (*fn)(void *), void *arg)
{
    long ret = syscall(SYS_clone3, args, sizeof *args);
    if (ret == 0)
        syscall(SYS_exit, fn(arg));
    return ret;
}
#endif

static PyObject *ChildError;

/* ---------------------------------------------------------------- argument conversion */

static void free_strings(char **list)
{
    if (list == NULL)
        return;
    for (char **s = list; *s != NULL; s++)
        PyMem_RawFree(*s);
    PyMem_RawFree(list);
}

/* A sequence of str/bytes -> NULL-terminated array of copies (PyMem_RawMalloc), or NULL with an error. */
static char **to_strings(PyObject *seq, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **out = PyMem_RawCalloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *bytes = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(fast, i), &bytes))
            goto fail;
        Py_ssize_t len = PyBytes_GET_SIZE(bytes);
        /* Room for a pid after "NAME=" (see pid_slots). */
        out[i] = PyMem_RawMalloc((size_t)len + 24);
        if (out[i] == NULL) {
            Py_DECREF(bytes);
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(out[i], PyBytes_AS_STRING(bytes), (size_t)len + 1);
        Py_DECREF(bytes);
    }
    Py_DECREF(fast);
    return out;
fail:
    Py_DECREF(fast);
    free_strings(out);
    return NULL;
}

static int to_ints(PyObject *seq, int **out, int *n, int max, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len > max) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: at most %d entries", what, max);
        return -1;
    }
    *out = PyMem_RawCalloc((size_t)len + 1, sizeof(int));
    if (*out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        (*out)[i] = (int)v;
    }
    *n = (int)len;
    Py_DECREF(fast);
    return 0;
}

/* ---------------------------------------------------------------- spawn */

/* One start: its plan, what converting the arguments allocated (owned here), and the outcome. */
struct job {
    struct plan plan;
    PyObject *exe_b, *cwd_b, *oom_b;
    char **argv, **envp;
    int *fds, *groups_i, *slots;
    gid_t *groups;
    char *pid_slots[8];
    int cgroup_fd;
    /* the outcome, set by job_run */
    long pid;
    int pidfd;
    int saved_errno; /* with failed: no child was made (or no pipe for it) */
    const char *failed;
    int step, child_err; /* a step in the child failed (the child is reaped) */
};

static void job_free(struct job *j)
{
    Py_XDECREF(j->exe_b);
    Py_XDECREF(j->cwd_b);
    Py_XDECREF(j->oom_b);
    free_strings(j->argv);
    free_strings(j->envp);
    PyMem_RawFree(j->fds);
    PyMem_RawFree(j->groups_i);
    PyMem_RawFree(j->groups);
    PyMem_RawFree(j->slots);
    memset(j, 0, sizeof *j);
}

/* Convert one argument tuple (see spawn_doc) into j->plan; 0, or -1 with an exception set. The
 * caller frees j with job_free either way. */
static int job_parse(struct job *j, PyObject *args)
{
    PyObject *argv_o, *env_o, *cwd_o, *fds_o, *groups_o, *rlimits_o, *nice_o, *oom_o, *slots_o;
    int umask_v, ioprio, no_new_privs, ngroups = 0, nslots = 0;
    long uid, gid;
    struct plan *plan = &j->plan;
    memset(j, 0, sizeof *j);
    j->pid = -1;
    j->pidfd = -1;
    if (!PyArg_ParseTuple(args, "O&OOOOillOOiOiOpO:spawn", PyUnicode_FSConverter, &j->exe_b, &argv_o,
                          &env_o, &cwd_o, &fds_o, &j->cgroup_fd, &uid, &gid, &groups_o, &rlimits_o,
                          &umask_v, &nice_o, &ioprio, &oom_o, &no_new_privs, &slots_o))
        return -1;
    if ((j->argv = to_strings(argv_o, "argv must be a sequence")) == NULL)
        return -1;
    if ((j->envp = to_strings(env_o, "env must be a sequence")) == NULL)
        return -1;
    if (cwd_o != Py_None && !PyUnicode_FSConverter(cwd_o, &j->cwd_b))
        return -1;
    if (to_ints(fds_o, &j->fds, &plan->nfds, MAX_FDS, "fds") < 0)
        return -1;
    if (groups_o != Py_None) {
        if (to_ints(groups_o, &j->groups_i, &ngroups, 65536, "groups") < 0)
            return -1;
        j->groups = PyMem_RawCalloc((size_t)ngroups + 1, sizeof(gid_t));
        if (j->groups == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (int i = 0; i < ngroups; i++)
            j->groups[i] = (gid_t)j->groups_i[i];
        plan->groups = j->groups;
        plan->ngroups = ngroups;
    }
    PyObject *fast = PySequence_Fast(rlimits_o, "rlimits must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_RLIMITS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many rlimits");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int res;
        long long soft, hard;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iLL", &res, &soft, &hard)) {
            Py_DECREF(fast);
            return -1;
        }
        plan->rlimits[i].resource = res;
        plan->rlimits[i].value.rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
        plan->rlimits[i].value.rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
    }
    plan->nrlimits = (int)n;
    Py_DECREF(fast);
    if (nice_o != Py_None) {
        plan->has_nice = 1;
        plan->nice = (int)PyLong_AsLong(nice_o);
        if (plan->nice == -1 && PyErr_Occurred())
            return -1;
    }
    if (oom_o != Py_None) {
        if ((j->oom_b = PyUnicode_AsASCIIString(oom_o)) == NULL)
            return -1;
        plan->oom_score_adj = PyBytes_AS_STRING(j->oom_b);
    }
    if (to_ints(slots_o, &j->slots, &nslots, 8, "pid_vars") < 0)
        return -1;
    Py_ssize_t nenv = 0;
    while (j->envp[nenv] != NULL)
        nenv++;
    for (int i = 0; i < nslots; i++) {
        if (j->slots[i] < 0 || j->slots[i] >= nenv) {
            PyErr_SetString(PyExc_ValueError, "pid_vars: index out of range");
            return -1;
        }
        j->pid_slots[i] = j->envp[j->slots[i]];
    }
    plan->exe = PyBytes_AS_STRING(j->exe_b);
    plan->argv = j->argv;
    plan->envp = j->envp;
    plan->cwd = j->cwd_b != NULL ? PyBytes_AS_STRING(j->cwd_b) : NULL;
    plan->fds = j->fds;
    plan->uid = uid;
    plan->gid = gid;
    plan->umask = umask_v;
    plan->ioprio = ioprio;
    plan->no_new_privs = no_new_privs;
    plan->pid_slots = j->pid_slots;
    plan->npid_slots = nslots;
    long open_max = sysconf(_SC_OPEN_MAX);
    plan->max_fd = open_max > 0 && open_max < 1 << 20 ? (int)open_max : 1 << 20;
    return 0;
}

/* Make the child and wait until it has exec'd or reported a failed step. Runs without the GIL (and,
 * in start_many, on several threads at once: each call suspends only its own thread). */
static void job_run(struct job *j, const sigset_t *child_mask)
{
    struct plan *plan = &j->plan;
    int pipefd[2] = {-1, -1};
    void *stack = MAP_FAILED;
    j->failed = "clone3";
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        j->saved_errno = errno;
        j->failed = "pipe2";
        goto out;
    }
    if (pipefd[1] < plan->nfds) {
        int high = fcntl(pipefd[1], F_DUPFD_CLOEXEC, plan->nfds);
        if (high < 0) {
            j->saved_errno = errno;
            j->failed = "fcntl";
            goto out;
        }
        close(pipefd[1]);
        pipefd[1] = high;
    }
    plan->err_fd = pipefd[1];
    struct hasupd_clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VFORK | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&j->pidfd;
    ca.exit_signal = SIGCHLD;
    if (SHARES_MEMORY) {
        stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
        if (stack == MAP_FAILED) {
            j->saved_errno = errno;
            j->failed = "mmap";
            goto out;
        }
        ca.flags |= CLONE_VM;
        ca.stack = (uint64_t)(uintptr_t)stack;
        ca.stack_size = CHILD_STACK_SIZE;
    }
    if (j->cgroup_fd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)j->cgroup_fd;
    }
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    /* The child execs with the mask of hasupd's calling thread, not that of a helper thread (which
     * blocks every signal: see start_many). */
    plan->old_mask = child_mask != NULL ? *child_mask : saved;
    j->pid = clone3_call(&ca, child_main, plan);
    if (j->pid < 0)
        j->saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (j->pid < 0)
        goto out;
    close(pipefd[1]);
    pipefd[1] = -1;
    int msg[2];
    ssize_t got;
    do
        got = read(pipefd[0], msg, sizeof msg);
    while (got < 0 && errno == EINTR);
    if (got == (ssize_t)sizeof msg) {
        j->step = msg[0];
        j->child_err = msg[1];
        int status;
        while (waitpid((pid_t)j->pid, &status, __WALL) < 0 && errno == EINTR)
            ;
        close(j->pidfd);
        j->pidfd = -1;
    }
out:
    if (stack != MAP_FAILED)
        munmap(stack, CHILD_STACK_SIZE);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
}

/* The failure of a finished job as an exception instance (a new reference), or NULL with no exception
 * set if it succeeded, or NULL with an exception set if building it failed. */
static PyObject *job_error(const struct job *j)
{
    if (j->pid < 0 || j->saved_errno != 0) {
        int err = j->saved_errno != 0 ? j->saved_errno : EINVAL;
        return PyObject_CallFunction(PyExc_OSError, "iss", err, strerror(err), j->failed);
    }
    if (j->step != 0) {
        const char *name = j->step > 0 && j->step <= STEP_EXEC ? step_names[j->step] : "?";
        return PyObject_CallFunction(ChildError, "iss", j->child_err, strerror(j->child_err), name);
    }
    return NULL;
}

PyDoc_STRVAR(spawn_doc,
"spawn(exe, argv, env, cwd, fds, cgroup_fd, uid, gid, groups, rlimits, umask, nice, ioprio,\n"
"      oom_score_adj, no_new_privs, pid_vars) -> (pid, pidfd)\n\n"
"Start exe as a new session leader. fds: target fd i gets fds[i] (all others are closed).\n"
"cgroup_fd: an open cgroup2 directory to create the child in, or -1. uid, gid: -1 keeps hasupd's;\n"
"groups: None keeps them. rlimits: ((RLIMIT_*, soft, hard), ...) with -1 for infinity. umask, ioprio:\n"
"-1 keeps; nice, oom_score_adj: None keeps. pid_vars: indexes of env entries (\"LISTEN_PID=\") to\n"
"which the child appends its own pid. Return the pid and a pidfd of the child, which has exec'd.\n"
"Raise ChildError(errno, strerror, step) if a step in the child failed (the child is reaped), or\n"
"OSError(errno, strerror, 'clone3') if no child was made.");

static PyObject *spawn(PyObject *self, PyObject *args)
{
    (void)self;
    struct job j;
    PyObject *result = NULL;
    if (job_parse(&j, args) == 0) {
        Py_BEGIN_ALLOW_THREADS
        job_run(&j, NULL);
        Py_END_ALLOW_THREADS
        PyObject *error = job_error(&j);
        if (error != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(error), error);
            Py_DECREF(error);
        } else if (!PyErr_Occurred()) {
            result = Py_BuildValue("(li)", j.pid, j.pidfd);
        }
    }
    job_free(&j);
    return result;
}

/* ---------------------------------------------------------------- start_many */

struct pool {
    struct job *jobs;
    Py_ssize_t count;
    Py_ssize_t next;     /* taken with an atomic add */
    sigset_t child_mask; /* the calling thread's signal mask: every child execs with it */
};

static void *pool_work(void *arg)
{
    struct pool *pool = arg;
    for (;;) {
        Py_ssize_t i = __atomic_fetch_add(&pool->next, 1, __ATOMIC_RELAXED);
        if (i >= pool->count)
            return NULL;
        job_run(&pool->jobs[i], &pool->child_mask);
    }
}

#define MAX_THREADS 16

PyDoc_STRVAR(batch_doc,
"A group of starts under way (see start_many): wait() returns their outcomes.");

typedef struct {
    PyObject_HEAD
    struct job *jobs;
    Py_ssize_t parsed; /* jobs to free */
    struct pool pool;
    pthread_t helpers[MAX_THREADS];
    int started; /* helper threads running (joined by wait or dealloc) */
    int done;    /* joined: the outcomes are in jobs */
    int taken;   /* wait() handed them over */
} BatchObject;

static PyTypeObject BatchType;

/* Join the helper threads (the GIL must NOT be held). */
static void batch_join(BatchObject *b)
{
    for (int t = 0; t < b->started; t++)
        pthread_join(b->helpers[t], NULL);
    b->started = 0;
    b->done = 1;
}

/* Parse `starts` and start making them on up to `threads` helper threads; NULL with an exception
 * (nothing made) if an entry is malformed. */
static BatchObject *batch_start(PyObject *starts_o, int threads)
{
    PyObject *starts = PySequence_Fast(starts_o, "starts must be a sequence");
    if (starts == NULL)
        return NULL;
    BatchObject *b = PyObject_New(BatchObject, &BatchType);
    if (b == NULL) {
        Py_DECREF(starts);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(starts);
    b->jobs = PyMem_RawCalloc((size_t)count + 1, sizeof *b->jobs);
    b->parsed = 0;
    b->started = 0;
    b->done = 1; /* until the threads run: nothing to join */
    b->taken = 0;
    memset(&b->pool, 0, sizeof b->pool);
    if (b->jobs == NULL) {
        Py_DECREF(starts);
        Py_DECREF(b);
        return (BatchObject *)PyErr_NoMemory();
    }
    for (; b->parsed < count; b->parsed++) {
        if (job_parse(&b->jobs[b->parsed], PySequence_Fast_GET_ITEM(starts, b->parsed)) < 0) {
            b->parsed++; /* job_parse leaves partial allocations: free this one too */
            Py_DECREF(starts);
            b->taken = 1; /* no child was made: nothing to hand over */
            Py_DECREF(b);
            return NULL;
        }
    }
    Py_DECREF(starts);
    b->pool.jobs = b->jobs;
    b->pool.count = count;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads > count)
        threads = (int)count;
    if (threads < 1)
        threads = 1;
    b->done = 0;
    pthread_attr_t attr;
    int have_attr = pthread_attr_init(&attr) == 0;
    if (have_attr)
        pthread_attr_setstacksize(&attr, 256 * 1024);
    /* Helper threads start with every signal blocked: signals stay with hasupd's own threads; each
     * child execs with the calling thread's mask (child_mask). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    b->pool.child_mask = old;
    for (int t = 0; t < threads; t++) {
        if (pthread_create(&b->helpers[b->started], have_attr ? &attr : NULL, pool_work, &b->pool) != 0)
            break;
        b->started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (have_attr)
        pthread_attr_destroy(&attr);
    if (b->started == 0) { /* no thread at all: make them here, now */
        Py_BEGIN_ALLOW_THREADS
        pool_work(&b->pool);
        Py_END_ALLOW_THREADS
        b->done = 1;
    }
    return b;
}

/* The outcomes of a joined batch: [(pid, pidfd) | exception, ...]; the pidfds are handed over. */
static PyObject *batch_outcomes(BatchObject *b)
{
    Py_ssize_t count = b->pool.count;
    PyObject *result = PyList_New(count);
    if (result == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = job_error(&b->jobs[i]);
        if (item == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(result);
                return NULL;
            }
            item = Py_BuildValue("(li)", b->jobs[i].pid, b->jobs[i].pidfd);
            if (item == NULL) {
                Py_DECREF(result);
                return NULL;
            }
        }
        PyList_SET_ITEM(result, i, item);
    }
    for (Py_ssize_t i = 0; i < count; i++)
        b->jobs[i].pidfd = -1; /* handed over */
    b->taken = 1;
    return result;
}

PyDoc_STRVAR(batch_wait_doc,
"wait() -> [(pid, pidfd) | exception, ...]\n\n"
"Wait until every start has exec'd or failed; return one item per start, in order: (pid, pidfd),\n"
"or the ChildError or OSError that spawn would have raised (not raised). Once only.");

static PyObject *batch_wait(PyObject *self, PyObject *unused)
{
    (void)unused;
    BatchObject *b = (BatchObject *)self;
    if (b->taken) {
        PyErr_SetString(PyExc_RuntimeError, "wait() was already called");
        return NULL;
    }
    if (!b->done) {
        Py_BEGIN_ALLOW_THREADS
        batch_join(b);
        Py_END_ALLOW_THREADS
    }
    return batch_outcomes(b);
}

static void batch_dealloc(PyObject *self)
{
    BatchObject *b = (BatchObject *)self;
    if (!b->done) {
        Py_BEGIN_ALLOW_THREADS
        batch_join(b);
        Py_END_ALLOW_THREADS
    }
    if (b->jobs != NULL) {
        if (!b->taken) /* never waited for: the children run on, but their pidfds must not leak */
            for (Py_ssize_t i = 0; i < b->pool.count; i++)
                if (b->jobs[i].pidfd >= 0)
                    close(b->jobs[i].pidfd);
        for (Py_ssize_t i = 0; i < b->parsed; i++)
            job_free(&b->jobs[i]);
        PyMem_RawFree(b->jobs);
    }
    PyObject_Free(self);
}

static PyMethodDef batch_methods[] = {
    {"wait", batch_wait, METH_NOARGS, batch_wait_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hasupd.host._spawn.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_dealloc = batch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = batch_doc,
    .tp_methods = batch_methods,
};

PyDoc_STRVAR(start_many_doc,
"start_many(starts, threads) -> Batch\n\n"
"Start making every entry of starts (each a tuple of spawn's arguments) on up to `threads` threads\n"
"of its own, and return at once: the caller goes on (preparing the next group) while the children\n"
"are made, each thread waiting for its own child's exec. Batch.wait() returns the outcomes. A\n"
"malformed entry raises at once, before any child is made.");

static PyObject *start_many(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *starts_o;
    int threads;
    if (!PyArg_ParseTuple(args, "Oi:start_many", &starts_o, &threads))
        return NULL;
    return (PyObject *)batch_start(starts_o, threads);
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"start_many", start_many, METH_VARARGS, start_many_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "hasupd.host._spawn",
    "clone3(CLONE_INTO_CGROUP) spawning with no Python code in the child (see hasupd.host.clone).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    ChildError = PyErr_NewException("hasupd.host._spawn.ChildError", PyExc_OSError, NULL);
    if (ChildError == NULL || PyModule_AddObject(m, "ChildError", ChildError) < 0) {
        Py_XDECREF(ChildError);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(ChildError);
    PyModule_AddIntConstant(m, "SHARES_MEMORY", SHARES_MEMORY);
    if (PyType_Ready(&BatchType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
