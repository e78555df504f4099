/* core_speed.h: how fast the CPU core runs now, printed beside each pair benchmark result
 * (bench_alloc, runtime_like's pair loop), so that a result says what it was measured at.
 *
 * Two probes of about 2 ms each, in ns per step:
 *   latency:    one dependent multiply-add chain (one instruction at a time): slows when the
 *               host lowers the core's clock;
 *   throughput: six independent xor-shift-add chains (several instructions a cycle, as the shim's
 *               own code runs): slows with the clock too, and also when another thread shares
 *               the core's execution units.
 * On the CPU test machine the shim's pairs went from about 45 to 75 ns at times with the latency
 * probe (0.67 to 1.5 ns a step), and more often with the throughput probe alone (1.65-1.82 to
 * 1.83-2.89 ns, the latency probe staying near 0.7). On H100 machines the shim's pairs took 1.8x
 * in some processes while the runtime's own share did not change; which probe follows that is
 * for a GPU run to show. */
#ifndef GS_CORE_SPEED_H
#define GS_CORE_SPEED_H

#include <stdint.h>
#include <time.h>

static inline double core_speed_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static inline void core_speed(double *latency_ns, double *throughput_ns)
{
    enum { STEPS = 1000000 };
    uint64_t y = 1;
    double t0 = core_speed_now_ns();
    for (int i = 0; i < 2 * STEPS; i++) {
        y = y * 3 + (y >> 7);
        __asm__ volatile("" : "+r"(y));
    }
    double t1 = core_speed_now_ns();
    uint64_t a = 1, b = 2, c = 3, d = 4, e = 5, f = 6;
#define CORE_SPEED_STEP(v) v = (v ^ (v >> 3)) + 0x9e3779b97f4a7c15ull
    for (int i = 0; i < STEPS; i++) {
        CORE_SPEED_STEP(a);
        CORE_SPEED_STEP(b);
        CORE_SPEED_STEP(c);
        CORE_SPEED_STEP(d);
        CORE_SPEED_STEP(e);
        CORE_SPEED_STEP(f);
        __asm__ volatile("" : "+r"(a), "+r"(b), "+r"(c), "+r"(d), "+r"(e), "+r"(f));
    }
#undef CORE_SPEED_STEP
    double t2 = core_speed_now_ns();
    *latency_ns = (t1 - t0) / (2 * STEPS);
    *throughput_ns = (t2 - t1) / STEPS;
}

#endif
