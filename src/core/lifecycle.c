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
#include <libgen.h>
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

/* The folder of a report or trace must exist now: better to stop at start than lose it at exit. */
static int writable_folder(const char *path)
{
    char copy[GS_PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    return access(dir, W_OK) == 0 ? 0 : -errno;
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
    if (gs_opts.report == GS_REPORT_FILE && writable_folder(gs_opts.report_path) != 0) {
        gs_log_error("GPUSHIM_REPORT=%s: the folder does not exist or is not writable; accepted: "
                     "stderr, off, or a file path in a writable folder",
                     gs_opts.report_path);
        _exit(1);
    }
    if (gs_opts.trace_path[0] && writable_folder(gs_opts.trace_path) != 0) {
        gs_log_error("GPUSHIM_TRACE=%s: the folder does not exist or is not writable; accepted: a "
                     "file path in a writable folder",
                     gs_opts.trace_path);
        _exit(1);
    }
    gs_tracing = gs_opts.trace_path[0] != '\0';
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
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
            gs_log_warning("cannot write the report to %s (%s); it follows here", path,
                           strerror(errno));
            fd = STDERR_FILENO;
        }
    }
    gs_write_all(fd, buf.data, buf.len);
    if (fd != STDERR_FILENO)
        close(fd);
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
