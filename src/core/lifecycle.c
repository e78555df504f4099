/* lifecycle.c: what happens at load, at fork and at exit.
 *
 * Load: read the options (a bad value stops the process before main) and nothing else: a process
 * that never touches CUDA (bash, pip, a compiler that inherited LD_PRELOAD) pays one scan of its
 * environment. libcuda is loaded on the first intercepted call, not here.
 * Fork: the child cannot use the parent's CUDA context, so it forgets the parent's blocks and
 * counts; it prints a report only if it allocates itself.
 * Exit: the report, once, from counters only. The CUDA runtime tears itself down in atexit
 * handlers that may already have run, so no CUDA call is made. */
#include "gs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static atomic_bool gs_finished;

const gs_backend_t *gs_backend_for_mode(gs_mode_t mode)
{
    switch (mode) {
    case GS_MODE_OFF:
        return &gs_backend_passthrough;
    case GS_MODE_POOL:
        return &gs_backend_pool;
    case GS_MODE_MANAGED:
        return &gs_backend_managed;
    }
    return NULL;
}

static void forget_parent(void)
{
    const gs_backend_t *backend = gs_dispatch_backend();
    if (backend->forget)
        backend->forget();
    gs_budget_forget();
    gs_host_pool_forget();
    gs_stats_reset();
    gs_trace_forget();
    gs_streams_forget();
    atomic_store(&gs_finished, false);
}

/* Managed mode, and where we differ from a pure interposer: XLA (JAX, TensorFlow) builds its
 * arena with the virtual-memory API, which we pass through, unless TF_FORCE_UNIFIED_MEMORY asks
 * it for cuMemAllocManaged; and JAX would take 75% of the GPU at once, past any sensible
 * GPUSHIM_MANAGED_LIMIT. So both are set here, before main reads the environment, unless the
 * user set them. Children inherit them, as they inherit GPUSHIM_MODE. */
static void ask_frameworks_for_managed_memory(void)
{
    setenv("TF_FORCE_UNIFIED_MEMORY", "1", 0);
    setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false", 0);
}

atomic_bool gs_started;

void gs_start(char *const *envp)
{
    char err[1024];
    if (gs_options_parse(envp, &gs_opts, err, sizeof err) != 0) {
        gs_log_error("%s", err);
        _exit(1);
    }
    const gs_backend_t *backend = gs_backend_for_mode(gs_opts.mode);
    /* Raised privileges: a user must not make a setuid program write where it may and the user
     * may not. No GPUSHIM_* path is used; said once, where one was set. */
    if (gs_secure_process() && gs_options_secure(&gs_opts))
        gs_log_warning("this program runs with raised privileges (setuid, setgid or "
                       "capabilities): GPUSHIM_REPORT and GPUSHIM_TRACE paths are ignored; the "
                       "report goes to stderr");
    /* Better to stop at start than lose the report or trace at exit. */
    if ((gs_opts.report == GS_REPORT_FILE &&
         gs_output_check("GPUSHIM_REPORT", gs_opts.report_path, err, sizeof err) != 0) ||
        (gs_opts.trace_path[0] &&
         gs_output_check("GPUSHIM_TRACE", gs_opts.trace_path, err, sizeof err) != 0)) {
        gs_log_error("%s", err);
        _exit(1);
    }
    gs_tracing = gs_opts.trace_path[0] != '\0';
    if (gs_tracing)
        gs_trace_start();
    if (gs_opts.mode == GS_MODE_MANAGED)
        ask_frameworks_for_managed_memory();
    gs_dispatch_use(backend);
    gs_clock_start();
    pthread_atfork(NULL, NULL, forget_parent);
    atomic_store(&gs_started, true);
}

/* Writes a rendered report where GPUSHIM_REPORT says; a write error is said once. */
static void report_write(const gs_buf_t *buf)
{
    int fd = STDERR_FILENO;
    if (gs_opts.report == GS_REPORT_FILE) {
        char path[GS_PATH_MAX];
        gs_expand_path(gs_opts.report_path, path, sizeof path);
        fd = gs_output_open(path, true, "report");
        if (fd < 0) {
            gs_log_warning("the report follows here");
            fd = STDERR_FILENO;
        }
    }
    static atomic_bool warned;
    atomic_store(&warned, false); /* once per report written */
    gs_output_write(fd, buf->data, buf->len, "report", &warned);
    if (fd != STDERR_FILENO && close(fd) != 0 && !atomic_exchange(&warned, true))
        gs_log_warning("writing the report failed (%s)", strerror(errno));
}

static gs_buf_t gs_report_buf; /* static: too large for the stack of an exiting thread */

void gs_report_emit(void)
{
    gs_report_buf.len = 0;
    gs_report_render(&gs_report_buf);
    report_write(&gs_report_buf);
}

/* The report is rendered before the trace is flushed, so that every record it counts is in the
 * trace though other threads go on allocating. */
static void finish(bool signalled)
{
    /* Once, whichever thread calls exit, however often the destructor runs, whatever signal. */
    if (atomic_exchange(&gs_finished, true))
        return;
    bool report = gs_opts.report != GS_REPORT_OFF && (gs_stats_active() || gs_host_pool_active());
    gs_report_buf.len = 0;
    if (report)
        gs_report_render(&gs_report_buf);
    if (signalled)
        gs_trace_flush_after_signal();
    else
        gs_trace_flush();
    if (report)
        report_write(&gs_report_buf);
}

void gs_finish(void)
{
    finish(false);
}

/* ---- the signals a scheduler ends a job with ---------------------------------------------- */

/* SIGTERM and SIGINT (scancel, kill, Ctrl-C), SIGHUP, SIGXCPU (Slurm's CPU limit): a job ended
 * so would otherwise leave no report and lose the trace's buffers. Installed when the process
 * first uses CUDA, not at load (a process that never does is left alone, and Python, which
 * installs its KeyboardInterrupt handler only over the default action, has done so by then), and
 * only where the program left the default action: the handler writes the report and the trace, restores the default and
 * raises the signal again, so the program ends as it would have (status, core dump). A handler
 * the program installs later replaces ours, as it would replace the default. Hazard: the signal
 * may interrupt a thread inside the shim; no lock is waited for without a bound
 * (gs_trace_flush_after_signal), nothing is allocated, no CUDA is called. SIGKILL, _exit and
 * abort cannot be caught: the trace then holds what was written when a buffer filled, in whole
 * lines. */
static const int gs_ending_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGXCPU};

static void on_ending_signal(int sig)
{
    int saved = errno;
    finish(true);
    signal(sig, SIG_DFL);
    errno = saved;
    raise(sig); /* blocked until the handler returns, then the default action */
}

void gs_signals_install(void)
{
    if (gs_opts.report == GS_REPORT_OFF && !gs_tracing)
        return;
    struct sigaction ours = {.sa_handler = on_ending_signal};
    sigemptyset(&ours.sa_mask);
    for (size_t i = 0; i < sizeof gs_ending_signals / sizeof gs_ending_signals[0]; i++)
        sigaddset(&ours.sa_mask, gs_ending_signals[i]);
    for (size_t i = 0; i < sizeof gs_ending_signals / sizeof gs_ending_signals[0]; i++) {
        struct sigaction old;
        if (sigaction(gs_ending_signals[i], NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
            old.sa_handler == SIG_DFL)
            sigaction(gs_ending_signals[i], &ours, NULL);
    }
}
