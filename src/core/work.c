/* work.c: whether GPU work may be in flight. The shim sees every driver entry point that
 * enqueues work (kernel launches, graph launches, copies, memsets, stream memory operations:
 * interpose/work.c wraps them), so it can tell a device on which nothing was issued since the
 * last point the pool knows to cover all earlier work (a mark or a synchronization). A block
 * freed in such a quiet spell is safe to reuse as soon as that point has completed, with no new
 * event or synchronization: the pool's safe reuse at the speed of immediate reuse while the GPU
 * has nothing queued (pool_central.c, GPUSHIM_POOL_IDLE_REUSE).
 *
 * Per device, one word: (token << 1) | 1 while quiet since the point with that token, 0 after
 * any work. One word, so that a free reads the token and the flag together: a token read apart
 * from its flag could name another point, one that does not cover the work before the free. */
#include "gs.h"

_Atomic uint64_t gs_quiet[GS_MAX_DEVICES];
/* The same for the pinned host pool (host_pool.c), whose points cover the process's one device. */
static _Atomic uint64_t gs_quiet_host;
static _Atomic int gs_quiet_devices;   /* words that may be set: highest device marked + 1 */
static _Atomic(const char *) gs_blind; /* why the shim cannot see all work, or NULL */
static _Atomic unsigned gs_wrappers;   /* work-issuing functions wrapped (for the report) */

void gs_work_note_wrapper(void)
{
    atomic_fetch_add_explicit(&gs_wrappers, 1, memory_order_relaxed);
}

unsigned gs_work_wrapper_count(void)
{
    return atomic_load_explicit(&gs_wrappers, memory_order_relaxed);
}

bool gs_work_watched(void)
{
    return atomic_load_explicit(&gs_blind, memory_order_acquire) == NULL;
}

const char *gs_work_blind_reason(void)
{
    return atomic_load(&gs_blind);
}

/* For good: some work may be issued where the shim cannot see it. */
void gs_work_blind(const char *why)
{
    const char *none = NULL;
    atomic_compare_exchange_strong(&gs_blind, &none, why);
    gs_work_enqueued();
}

/* After every call that may have enqueued work (the wrappers call this once the driver has
 * returned, so the work is queued before any device looks quiet again). Most calls find every
 * word already 0: a load each, no write, so launching threads share the cache line. */
void gs_work_enqueued(void)
{
    int n = atomic_load_explicit(&gs_quiet_devices, memory_order_relaxed);
    for (int d = 0; d < n; d++)
        if (atomic_load(&gs_quiet[d]) & 1)
            atomic_fetch_and(&gs_quiet[d], ~(uint64_t)1);
    if (atomic_load(&gs_quiet_host) & 1)
        atomic_fetch_and(&gs_quiet_host, ~(uint64_t)1);
}

/* The work wrappers run where a pool's safe reuse asks whether the GPU is idle: the device pool
 * (pool and managed mode, safe reuse, GPUSHIM_POOL_IDLE_REUSE=auto) or the pinned host pool. */
bool gs_work_wanted(void)
{
    return (gs_opts.mode != GS_MODE_OFF && gs_opts.pool_reuse == GS_REUSE_SAFE &&
            gs_opts.pool_idle_reuse == GS_IDLE_REUSE_AUTO) ||
           gs_host_pool_on();
}

void gs_work_host_quiet_from(uint64_t token)
{
    if (!gs_work_watched() || !gs_work_wanted())
        return;
    atomic_store(&gs_quiet_host, token << 1 | 1);
    if (!gs_work_watched())
        atomic_store(&gs_quiet_host, 0);
}

bool gs_work_host_quiet_token(uint64_t *token)
{
    uint64_t word = atomic_load(&gs_quiet_host);
    *token = word >> 1;
    return word & 1;
}

/* Before the point with this token is recorded (an event) or made (a synchronization): from
 * now on, until work is issued, that point covers everything issued on the device. */
void gs_work_quiet_from(int device, uint64_t token)
{
    if (!gs_work_watched())
        return;
    int n = atomic_load(&gs_quiet_devices);
    while (n <= device && !atomic_compare_exchange_weak(&gs_quiet_devices, &n, device + 1)) {
    }
    atomic_store(&gs_quiet[device], token << 1 | 1);
    if (!gs_work_watched()) /* went blind meanwhile: the clear there may have missed this word */
        atomic_store(&gs_quiet[device], 0);
}

/* Fork child and tests: the parent's points are not the child's. */
void gs_work_forget(void)
{
    for (int d = 0; d < GS_MAX_DEVICES; d++)
        atomic_store(&gs_quiet[d], 0);
    atomic_store(&gs_quiet_host, 0);
}
