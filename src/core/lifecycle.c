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

void gs_report_emit(void)
{
    static gs_buf_t buf; /* static: too large for the stack of an exiting thread */
    buf.len = 0;
    gs_report_render(&buf);
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
    gs_output_write(fd, buf.data, buf.len, "report", &warned);
    if (fd != STDERR_FILENO && close(fd) != 0 && !atomic_exchange(&warned, true))
        gs_log_warning("writing the report failed (%s)", strerror(errno));
}

void gs_finish(void)
{
    /* Once, whichever thread calls exit and however often the destructor runs. */
    if (atomic_exchange(&gs_finished, true))
        return;
    gs_trace_flush();
    if (gs_opts.report == GS_REPORT_OFF || (!gs_stats_active() && !gs_host_pool_active()))
        return;
    gs_report_emit();
}
