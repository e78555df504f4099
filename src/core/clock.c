/* clock.c: a tick counter cheap enough to read on every allocation (rdtsc on x86-64, about
 * 7 ns; clock_gettime elsewhere), calibrated against CLOCK_MONOTONIC without any CUDA call. */
#include "gs.h"

#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

static uint64_t gs_clock_origin_ticks;
static uint64_t gs_clock_origin_ns;
static uint64_t gs_clock_origin_epoch_ns;

uint64_t gs_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t gs_ticks(void)
{
#if defined(__x86_64__)
    return __rdtsc();
#else
    return gs_now_ns();
#endif
}

void gs_clock_start(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    gs_clock_origin_epoch_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    gs_clock_origin_ns = gs_now_ns();
    gs_clock_origin_ticks = gs_ticks();
}

double gs_ticks_to_seconds(uint64_t ticks, double ticks_per_ns)
{
    if (ticks < gs_clock_origin_ticks)
        return 0;
    return (double)(ticks - gs_clock_origin_ticks) / ticks_per_ns / 1e9;
}

uint64_t gs_ticks_to_epoch_ns(uint64_t ticks, double ticks_per_ns)
{
    return gs_clock_origin_epoch_ns + (uint64_t)(gs_ticks_to_seconds(ticks, ticks_per_ns) * 1e9);
}

double gs_ticks_per_ns_since_start(uint64_t min_ns)
{
#if defined(__x86_64__)
    uint64_t ns = gs_now_ns(), ticks = gs_ticks();
    if (gs_clock_origin_ns == 0 || ns - gs_clock_origin_ns < min_ns)
        return 0;
    return (double)(ticks - gs_clock_origin_ticks) / (double)(ns - gs_clock_origin_ns);
#else
    return 1.0;
#endif
}

double gs_ticks_per_ns(void)
{
    double known = gs_ticks_per_ns_since_start(20000000u);
    if (known > 0)
        return known;
    /* Too short a life for a good ratio: measure over a few milliseconds instead. */
    uint64_t ns0 = gs_now_ns(), t0 = gs_ticks();
    while (gs_now_ns() - ns0 < 5000000u) {
    }
    return (double)(gs_ticks() - t0) / (double)(gs_now_ns() - ns0);
}
