/* stats.h: the counting done on every allocation and free, inline so that the express path
 * (dispatch.c) pays no calls for it. stats.c has the rest, and says why the counters are per
 * thread. */
#ifndef GS_STATS_H
#define GS_STATS_H

#include "gs.h"

#define GS_FOLD_BYTES (16 << 20)

typedef struct gs_counters {
    _Atomic uint64_t allocations, frees, failures, foreign_frees;
    _Atomic uint64_t bytes_requested, bytes_freed;
    _Atomic uint64_t driver_calls, timed_calls, shim_ticks;
    _Atomic int64_t unfolded; /* in-use bytes not yet in gs_global[].in_use */
    _Atomic uint64_t histogram[GS_HISTOGRAM_BUCKETS];
} gs_counters_t;

typedef struct gs_shard {
    gs_counters_t device[GS_MAX_DEVICES];
    struct gs_shard *next;
    atomic_bool owned;
} gs_shard_t;

typedef struct gs_global_count {
    _Atomic int64_t in_use;
    _Atomic int64_t peak;
    _Atomic uint64_t peak_ticks;
    char pad[40]; /* one device per cache line */
} gs_global_count_t;

extern gs_global_count_t gs_global[GS_MAX_DEVICES];
extern atomic_int gs_shard_count; /* shards ever made: 1 means one allocating thread */
extern GS_TLS gs_shard_t *gs_my_shard;

/* stats.c, off the fast path. */
gs_counters_t *gs_stats_claim(int device); /* the thread's first count: its shard */
void gs_stats_fold(int device, gs_counters_t *c);
void gs_stats_raise_peak(int device, int64_t now);

/* Owner-only counters: a relaxed load and store, no locked instruction. */
#define GS_BUMP(field, amount)                                                                     \
    atomic_store_explicit(&(field),                                                                \
                          atomic_load_explicit(&(field), memory_order_relaxed) + (amount),         \
                          memory_order_relaxed)

/* Devices past GS_MAX_DEVICES are counted on device 0. */
static inline int gs_stats_slot(int device)
{
    return (unsigned)device < GS_MAX_DEVICES ? device : 0;
}

/* The calling thread's counters for device (NULL only when out of host memory). */
static inline gs_counters_t *gs_counters(int device)
{
    device = gs_stats_slot(device);
    gs_shard_t *shard = gs_my_shard;
    if (__builtin_expect(shard == NULL, 0))
        return gs_stats_claim(device);
    return &shard->device[device];
}

/* The device's bytes in use change by delta: the peak against the global count + this thread's
 * unfolded delta, which is folded in once it passes GS_FOLD_BYTES while several threads count. */
static inline void gs_track_in_use(int device, gs_counters_t *c, int64_t delta)
{
    int64_t local = atomic_load_explicit(&c->unfolded, memory_order_relaxed) + delta;
    atomic_store_explicit(&c->unfolded, local, memory_order_relaxed);
    if (__builtin_expect((uint64_t)(local + GS_FOLD_BYTES) >= 2ull * GS_FOLD_BYTES, 0) &&
        atomic_load_explicit(&gs_shard_count, memory_order_relaxed) > 1) {
        gs_stats_fold(device, c);
        return;
    }
    if (delta <= 0)
        return;
    int64_t now = atomic_load_explicit(&gs_global[device].in_use, memory_order_relaxed) + local;
    if (__builtin_expect(now > atomic_load_explicit(&gs_global[device].peak, memory_order_relaxed),
                         0))
        gs_stats_raise_peak(device, now);
}

static inline void gs_count_alloc(int device, uint64_t bytes)
{
    device = gs_stats_slot(device);
    gs_counters_t *c = gs_counters(device);
    if (c == NULL)
        return;
    GS_BUMP(c->allocations, 1);
    GS_BUMP(c->bytes_requested, bytes);
    int bucket = bytes <= 1 ? 0 : 64 - __builtin_clzll(bytes - 1); /* ceil(log2(bytes)) */
    GS_BUMP(c->histogram[bucket < GS_HISTOGRAM_BUCKETS ? bucket : GS_HISTOGRAM_BUCKETS - 1], 1);
    gs_track_in_use(device, c, (int64_t)bytes);
}

static inline void gs_count_free(int device, uint64_t bytes)
{
    device = gs_stats_slot(device);
    gs_counters_t *c = gs_counters(device);
    if (c == NULL)
        return;
    GS_BUMP(c->frees, 1);
    GS_BUMP(c->bytes_freed, bytes);
    gs_track_in_use(device, c, -(int64_t)bytes);
}

#endif
