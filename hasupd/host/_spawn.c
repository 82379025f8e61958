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

static void close_above(const struct plan *p, int low)
{
    /* Keep err_fd (close-on-exec) open until exec. */
    if ((p->err_fd == low || syscall(SYS_close_range, low, p->err_fd - 1, 0) == 0) &&
        syscall(SYS_close_range, p->err_fd + 1, ~0U, 0) == 0)
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
    PyObject *exe_o, *argv_o, *env_o, *cwd_o, *fds_o, *groups_o, *rlimits_o, *nice_o, *oom_o, *slots_o;
    int cgroup_fd, umask_v, ioprio, no_new_privs;
    long uid, gid;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&OOOOillOOiOiOpO:spawn", PyUnicode_FSConverter, &exe_o, &argv_o,
                          &env_o, &cwd_o, &fds_o, &cgroup_fd, &uid, &gid, &groups_o, &rlimits_o,
                          &umask_v, &nice_o, &ioprio, &oom_o, &no_new_privs, &slots_o))
        return NULL;

    struct plan plan;
    memset(&plan, 0, sizeof plan);
    PyObject *result = NULL, *cwd_b = NULL, *oom_b = NULL;
    char **argv = NULL, **envp = NULL;
    int *fds = NULL, *groups_i = NULL, *slots = NULL, ngroups = 0, nslots = 0;
    gid_t *groups = NULL;
    char *pid_slots[8];

    if ((argv = to_strings(argv_o, "argv must be a sequence")) == NULL)
        goto out;
    if ((envp = to_strings(env_o, "env must be a sequence")) == NULL)
        goto out;
    if (cwd_o != Py_None && !PyUnicode_FSConverter(cwd_o, &cwd_b))
        goto out;
    if (to_ints(fds_o, &fds, &plan.nfds, MAX_FDS, "fds") < 0)
        goto out;
    if (groups_o != Py_None) {
        if (to_ints(groups_o, &groups_i, &ngroups, 65536, "groups") < 0)
            goto out;
        groups = PyMem_RawCalloc((size_t)ngroups + 1, sizeof(gid_t));
        if (groups == NULL) {
            PyErr_NoMemory();
            goto out;
        }
        for (int i = 0; i < ngroups; i++)
            groups[i] = (gid_t)groups_i[i];
        plan.groups = groups;
        plan.ngroups = ngroups;
    }
    {
        PyObject *fast = PySequence_Fast(rlimits_o, "rlimits must be a sequence");
        if (fast == NULL)
            goto out;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
        if (n > MAX_RLIMITS) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "too many rlimits");
            goto out;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            int res;
            long long soft, hard;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iLL", &res, &soft, &hard)) {
                Py_DECREF(fast);
                goto out;
            }
            plan.rlimits[i].resource = res;
            plan.rlimits[i].value.rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
            plan.rlimits[i].value.rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
        }
        plan.nrlimits = (int)n;
        Py_DECREF(fast);
    }
    if (nice_o != Py_None) {
        plan.has_nice = 1;
        plan.nice = (int)PyLong_AsLong(nice_o);
        if (plan.nice == -1 && PyErr_Occurred())
            goto out;
    }
    if (oom_o != Py_None) {
        if ((oom_b = PyUnicode_AsASCIIString(oom_o)) == NULL)
            goto out;
        plan.oom_score_adj = PyBytes_AS_STRING(oom_b);
    }
    if (to_ints(slots_o, &slots, &nslots, 8, "pid_vars") < 0)
        goto out;
    Py_ssize_t nenv = 0;
    while (envp[nenv] != NULL)
        nenv++;
    for (int i = 0; i < nslots; i++) {
        if (slots[i] < 0 || slots[i] >= nenv) {
            PyErr_SetString(PyExc_ValueError, "pid_vars: index out of range");
            goto out;
        }
        pid_slots[i] = envp[slots[i]];
    }
    plan.exe = PyBytes_AS_STRING(exe_o);
    plan.argv = argv;
    plan.envp = envp;
    plan.cwd = cwd_b != NULL ? PyBytes_AS_STRING(cwd_b) : NULL;
    plan.fds = fds;
    plan.uid = uid;
    plan.gid = gid;
    plan.umask = umask_v;
    plan.ioprio = ioprio;
    plan.no_new_privs = no_new_privs;
    plan.pid_slots = pid_slots;
    plan.npid_slots = nslots;
    long open_max = sysconf(_SC_OPEN_MAX);
    plan.max_fd = open_max > 0 && open_max < 1 << 20 ? (int)open_max : 1 << 16;

    int saved_errno = 0, step = 0, child_err = 0;
    long pid = -1;
    int pidfd = -1;
    const char *failed = "clone3";
    Py_BEGIN_ALLOW_THREADS
    int pipefd[2] = {-1, -1};
    void *stack = MAP_FAILED;
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        saved_errno = errno;
        failed = "pipe2";
        goto unlocked_out;
    }
    if (pipefd[1] < plan.nfds) {
        int high = fcntl(pipefd[1], F_DUPFD_CLOEXEC, plan.nfds);
        if (high < 0) {
            saved_errno = errno;
            failed = "fcntl";
            goto unlocked_out;
        }
        close(pipefd[1]);
        pipefd[1] = high;
    }
    plan.err_fd = pipefd[1];
    struct hasupd_clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_VFORK | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    if (SHARES_MEMORY) {
        stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
        if (stack == MAP_FAILED) {
            saved_errno = errno;
            failed = "mmap";
            goto unlocked_out;
        }
        ca.flags |= CLONE_VM;
        ca.stack = (uint64_t)(uintptr_t)stack;
        ca.stack_size = CHILD_STACK_SIZE;
    }
    if (cgroup_fd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)cgroup_fd;
    }
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &plan.old_mask);
    pid = clone3_call(&ca, child_main, &plan);
    if (pid < 0)
        saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &plan.old_mask, NULL);
    if (pid < 0)
        goto unlocked_out;
    close(pipefd[1]);
    pipefd[1] = -1;
    int msg[2];
    ssize_t got;
    do
        got = read(pipefd[0], msg, sizeof msg);
    while (got < 0 && errno == EINTR);
    if (got == (ssize_t)sizeof msg) {
        step = msg[0];
        child_err = msg[1];
        int status;
        while (waitpid((pid_t)pid, &status, __WALL) < 0 && errno == EINTR)
            ;
        close(pidfd);
        pidfd = -1;
    }
unlocked_out:
    if (stack != MAP_FAILED)
        munmap(stack, CHILD_STACK_SIZE);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    Py_END_ALLOW_THREADS

    if (pid < 0 || saved_errno != 0) {
        errno = saved_errno;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, failed);
    } else if (step != 0) {
        const char *name = step > 0 && step <= STEP_EXEC ? step_names[step] : "?";
        PyObject *exc = Py_BuildValue("(iss)", child_err, strerror(child_err), name);
        if (exc != NULL) {
            PyErr_SetObject(ChildError, exc);
            Py_DECREF(exc);
        }
    } else {
        result = Py_BuildValue("(li)", pid, pidfd);
    }
out:
    Py_XDECREF(exe_o);
    Py_XDECREF(cwd_b);
    Py_XDECREF(oom_b);
    free_strings(argv);
    free_strings(envp);
    PyMem_RawFree(fds);
    PyMem_RawFree(groups_i);
    PyMem_RawFree(groups);
    PyMem_RawFree(slots);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
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
    return m;
}
