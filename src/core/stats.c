/* stats.c: per-device counters.
 *
 * Why per thread: 16 threads bumping one shared counter bounce its cache line and cap the whole
 * process near 8 M operations/s (measured, BRIEF section 3). So each thread owns a shard of
 * plain counters, written only by that thread with relaxed atomics (no lock prefix), and the
 * report sums the shards. The in-use peak needs a global view: each thread checks the peak
 * against the device's global count + its own unfolded delta. While one thread allocates that
 * is exact and needs no shared write at all; once several do, each folds its delta into the
 * global count when it passes GS_FOLD_BYTES, so the peak can read low by at most that much per
 * other allocating thread. */
#include "stats.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

gs_global_count_t gs_global[GS_MAX_DEVICES];

static struct {
    pthread_mutex_t lock;
    gs_oom_event_t events[GS_OOM_EVENTS];
    unsigned count; /* ever recorded; events[count % GS_OOM_EVENTS] is the next slot */
} gs_ooms[GS_MAX_DEVICES] = {[0 ... GS_MAX_DEVICES - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

/* Context resets are rare: plain shared counters. */
static struct {
    _Atomic uint64_t resets, released, released_bytes;
} gs_resets[GS_MAX_DEVICES];

static gs_shard_t *_Atomic gs_shards;
static pthread_mutex_t gs_shards_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t gs_shard_key;
static pthread_once_t gs_shard_key_once = PTHREAD_ONCE_INIT;
atomic_int gs_shard_count;
GS_TLS gs_shard_t *gs_my_shard;

/* Raises the device's peak to now, remembering when (a clock read only on a new peak). */
void gs_stats_raise_peak(int device, int64_t now)
{
    int64_t peak = atomic_load_explicit(&gs_global[device].peak, memory_order_relaxed);
    while (now > peak) {
        if (atomic_compare_exchange_weak_explicit(&gs_global[device].peak, &peak, now,
                                                  memory_order_relaxed, memory_order_relaxed)) {
            atomic_store_explicit(&gs_global[device].peak_ticks, gs_ticks(), memory_order_relaxed);
            return;
        }
    }
}

void gs_stats_fold(int device, gs_counters_t *c)
{
    /* Owner only: a plain load and store, no locked instruction. */
    int64_t delta = atomic_load_explicit(&c->unfolded, memory_order_relaxed);
    atomic_store_explicit(&c->unfolded, 0, memory_order_relaxed);
    int64_t now =
        atomic_fetch_add_explicit(&gs_global[device].in_use, delta, memory_order_relaxed) + delta;
    gs_stats_raise_peak(device, now);
}

/* A thread ends: its counts stay (the report sums them), its shard goes to the next thread. */
static void release_shard(void *arg)
{
    gs_shard_t *shard = arg;
    for (int d = 0; d < GS_MAX_DEVICES; d++)
        gs_stats_fold(d, &shard->device[d]);
    atomic_store_explicit(&shard->owned, false, memory_order_release);
    gs_my_shard = NULL;
}

static void make_key(void)
{
    pthread_key_create(&gs_shard_key, release_shard);
}

static gs_shard_t *claim_shard(void)
{
    pthread_once(&gs_shard_key_once, make_key);
    pthread_mutex_lock(&gs_shards_lock);
    gs_shard_t *shard = atomic_load_explicit(&gs_shards, memory_order_relaxed);
    for (; shard; shard = shard->next) {
        bool expected = false;
        if (atomic_compare_exchange_strong(&shard->owned, &expected, true))
            break;
    }
    if (shard == NULL) {
        shard = calloc(1, sizeof *shard);
        if (shard) {
            atomic_fetch_add(&gs_shard_count, 1);
            atomic_store(&shard->owned, true);
            shard->next = atomic_load_explicit(&gs_shards, memory_order_relaxed);
            atomic_store_explicit(&gs_shards, shard, memory_order_release);
        }
    }
    pthread_mutex_unlock(&gs_shards_lock);
    if (shard)
        pthread_setspecific(gs_shard_key, shard);
    return shard;
}

gs_counters_t *gs_stats_claim(int device)
{
    gs_my_shard = claim_shard();
    return gs_my_shard ? &gs_my_shard->device[device] : NULL;
}

void gs_stats_alloc(int device, uint64_t bytes)
{
    gs_count_alloc(device, bytes);
}

void gs_stats_alloc_failed(int device)
{
    gs_counters_t *c = gs_counters(device);
    if (c)
        GS_BUMP(c->failures, 1);
}

void gs_stats_free(int device, uint64_t bytes)
{
    gs_count_free(device, bytes);
}

void gs_stats_foreign_free(int device)
{
    gs_counters_t *c = gs_counters(device);
    if (c)
        GS_BUMP(c->foreign_frees, 1);
}

void gs_stats_driver_call(int device)
{
    gs_counters_t *c = gs_counters(device);
    if (c)
        GS_BUMP(c->driver_calls, 1);
}

void gs_stats_oom(int device, uint64_t bytes)
{
    device = gs_stats_slot(device);
    pthread_mutex_lock(&gs_ooms[device].lock);
    gs_ooms[device].events[gs_ooms[device].count++ % GS_OOM_EVENTS] =
        (gs_oom_event_t){.bytes = bytes, .ticks = gs_ticks()};
    pthread_mutex_unlock(&gs_ooms[device].lock);
}

int gs_stats_oom_events(int device, gs_oom_event_t out[GS_OOM_EVENTS])
{
    if ((unsigned)device >= GS_MAX_DEVICES)
        return 0;
    pthread_mutex_lock(&gs_ooms[device].lock);
    unsigned count = gs_ooms[device].count;
    int n = count < GS_OOM_EVENTS ? (int)count : GS_OOM_EVENTS;
    for (int i = 0; i < n; i++)
        out[i] = gs_ooms[device].events[(count - (unsigned)n + (unsigned)i) % GS_OOM_EVENTS];
    pthread_mutex_unlock(&gs_ooms[device].lock);
    return n;
}

void gs_stats_context_reset(int device, uint64_t count, uint64_t bytes)
{
    if ((unsigned)device >= GS_MAX_DEVICES)
        return;
    atomic_fetch_add(&gs_resets[device].resets, 1);
    atomic_fetch_add(&gs_resets[device].released, count);
    atomic_fetch_add(&gs_resets[device].released_bytes, bytes);
}

void gs_stats_time(int device, uint64_t shim_ticks)
{
    gs_counters_t *c = gs_counters(device);
    if (c == NULL)
        return;
    GS_BUMP(c->timed_calls, 1);
    GS_BUMP(c->shim_ticks, shim_ticks);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

void gs_stats_snapshot(int device, gs_device_stats_t *out)
{
    memset(out, 0, sizeof *out);
    if ((unsigned)device >= GS_MAX_DEVICES)
        return;
    for (gs_shard_t *s = atomic_load_explicit(&gs_shards, memory_order_acquire); s; s = s->next) {
        gs_counters_t *c = &s->device[device];
        out->allocations += LOAD(c->allocations);
        out->frees += LOAD(c->frees);
        out->failures += LOAD(c->failures);
        out->foreign_frees += LOAD(c->foreign_frees);
        out->bytes_requested += LOAD(c->bytes_requested);
        out->bytes_freed += LOAD(c->bytes_freed);
        out->driver_calls += LOAD(c->driver_calls);
        out->timed_calls += LOAD(c->timed_calls);
        out->shim_ticks += LOAD(c->shim_ticks);
        for (int k = 0; k < GS_HISTOGRAM_BUCKETS; k++)
            out->histogram[k] += LOAD(c->histogram[k]);
    }
    out->resets = LOAD(gs_resets[device].resets);
    out->reset_released = LOAD(gs_resets[device].released);
    out->reset_released_bytes = LOAD(gs_resets[device].released_bytes);
    out->peak_ticks = LOAD(gs_global[device].peak_ticks);
    out->in_use = (int64_t)(out->bytes_requested - out->bytes_freed);
    out->peak = LOAD(gs_global[device].peak);
    if (out->peak < out->in_use) /* at most the unfolded slack; never report peak < now */
        out->peak = out->in_use;
}

/* Scans the shards rather than keeping a flag: nothing extra on the allocation path. */
bool gs_stats_active(void)
{
    for (gs_shard_t *s = atomic_load_explicit(&gs_shards, memory_order_acquire); s; s = s->next)
        for (int d = 0; d < GS_MAX_DEVICES; d++)
            if (LOAD(s->device[d].allocations) + LOAD(s->device[d].failures) > 0)
                return true;
    return false;
}

/* Fork child, tests: one thread runs, nothing is shared any more. Shards of threads that do
 * not exist in the child are handed back for reuse. */
void gs_stats_reset(void)
{
    pthread_mutex_init(&gs_shards_lock, NULL);
    for (gs_shard_t *s = atomic_load(&gs_shards); s; s = s->next) {
        memset(s->device, 0, sizeof s->device);
        atomic_store(&s->owned, s == gs_my_shard);
    }
    memset(gs_global, 0, sizeof gs_global);
    memset(gs_resets, 0, sizeof gs_resets);
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        pthread_mutex_init(&gs_ooms[d].lock, NULL);
        gs_ooms[d].count = 0;
    }
    /* The shards stay; only this thread's is owned now. */
}
