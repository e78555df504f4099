/* report.c: the exit report, rendered from counters only (no CUDA, no allocation). */
#include "gs.h"

#include <fcntl.h>
#include <unistd.h>

static void program_name(char *out, size_t len)
{
    out[0] = '\0';
    int fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, len - 1);
    close(fd);
    if (n <= 0)
        n = 0;
    out[n] = '\0';
    for (ssize_t i = 0; i < n; i++)
        if (out[i] == '\n')
            out[i] = '\0';
}

void gs_report_render(gs_buf_t *out)
{
    static const char *const modes[] = {"off", "pool", "managed"};
    char name[64];
    program_name(name, sizeof name);
    const gs_backend_t *backend = gs_dispatch_backend();
    gs_buf_printf(out, "gpushim: report for pid %d (%s), mode %s\n", (int)getpid(), name,
                  modes[gs_opts.mode]);
    double ticks_per_ns = gs_ticks_per_ns();
    for (int device = 0; device < GS_MAX_DEVICES; device++) {
        gs_device_stats_t s;
        gs_stats_snapshot(device, &s);
        if (s.allocations + s.failures + s.frees + s.foreign_frees + s.driver_calls == 0)
            continue;
        char requested[32], peak[32], now[32];
        uint64_t live = s.allocations - s.frees;
        gs_buf_printf(out,
                      "gpushim: device %d: %llu allocations, %llu frees, %llu failed, "
                      "%llu frees of pointers not allocated through the shim\n",
                      device, (unsigned long long)s.allocations, (unsigned long long)s.frees,
                      (unsigned long long)s.failures, (unsigned long long)s.foreign_frees);
        gs_buf_printf(out,
                      "gpushim: device %d: requested %s in total; in use: peak %s, at exit %s "
                      "in %llu live allocations\n",
                      device, gs_format_bytes(s.bytes_requested, requested),
                      gs_format_bytes((uint64_t)s.peak, peak),
                      gs_format_bytes((uint64_t)s.in_use, now), (unsigned long long)live);
        double mean_ns = s.timed_calls ? (double)s.shim_ticks / ticks_per_ns / (double)s.timed_calls
                                       : 0.0;
        gs_buf_printf(out,
                      "gpushim: device %d: %llu calls reached the driver; time in the shim %.0f ns "
                      "per call (mean of %llu timed allocation and free calls)\n",
                      device, (unsigned long long)s.driver_calls, mean_ns,
                      (unsigned long long)s.timed_calls);
        if (backend->report)
            backend->report(device, out);
    }
}
