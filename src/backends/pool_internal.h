/* pool_internal.h: what pool.c (thread caches, backend operations) and pool_central.c (free
 * lists, safe reuse, growth) share. Not part of the library's interface. */
#ifndef GS_POOL_INTERNAL_H
#define GS_POOL_INTERNAL_H

#include "gs.h"

#include <pthread.h>

#define GS_POOL_ALIGN 512ull         /* what cudaMalloc gives in practice (>= the 256 promised) */
#define GS_POOL_GRANULE (2ull << 20) /* chunks are multiples of the driver's 2 MiB pages */
#define SL_BITS 3                    /* 8 classes per power of two: at most 12.5% apart */
#define MIN_FL 9                     /* 512 B */
#define CLASS_COUNT ((48 - MIN_FL) << SL_BITS)
#define BITMAP_WORDS ((CLASS_COUNT + 63) / 64)
/* Blocks under SMALL_BLOCK are cut from chunks of their own. Mixed in among large blocks, small
 * ones keep the holes beside them from coalescing: on the random pattern (log-uniform
 * 256 B..4 MiB, random free order; scripts/fragmentation-model.sh, 40 seeds) the pool reserved
 * 1.20x the peak in use with one set of chunks, 1.17x with two (1.13x growing in place, see
 * gs_pool_vmm_t). Small blocks are 70% of the blocks there but 6% of the bytes. */
#define SMALL_BLOCK (256ull << 10)
/* HEAP_SPILL: pool mode with GPUSHIM_ON_OOM=managed, chunks of managed memory for what the device
 * heaps cannot serve; searched only once they cannot (pool_central.c, spill). Its bytes are not
 * the device's: they count against GPUSHIM_MANAGED_LIMIT, not GPUSHIM_POOL_MAX. */
enum { HEAP_SMALL, HEAP_LARGE, HEAP_SPILL, HEAPS };
/* A thread cache holds, per size class, a FIFO queue of freed blocks: up to CACHE_DEPTH blocks of
 * up to CACHE_BYTES together, and one larger block beside them. Under safe reuse the queue is
 * also where freed blocks wait for a synchronization: 256 of them make one synchronization serve
 * 256 allocations (a synchronization of an idle device costs 0.4-1.5 us measured). */
#define CACHE_DEPTH 256
#define CACHE_BYTES (32ull << 20) /* under safe reuse (at most GPUSHIM_POOL_PENDING_MAX) */
/* With no synchronization to amortize, less is held idle: every cached byte is one the pool
 * may have to grow for (random pattern, growth in place: 1.137x with 8 MiB, 1.126x with 4). */
#define CACHE_BYTES_IMMEDIATE (4ull << 20)
#define CACHE_CLASSES (((25 - MIN_FL) << SL_BITS) + 1) /* classes up to CACHE_BYTES (2^25) */
/* A synchronization this quick (ns) means an idle device: 50 us. A variable so that tests on a
 * loaded machine, where a thread may be preempted mid-synchronization, can raise it. */
extern uint64_t gs_pool_cheap_sync_ns;
#define BACKOFF_MIN_NS 1000000ull    /* after a slow one, none for 1 ms, doubling ... */
#define BACKOFF_MAX_NS 1000000000ull /* ... up to 1 s */
#define MARKS 16                     /* marks in flight at most (see record_event) ... */
#define MARK_INTERVAL_NS 100000ull   /* ... recorded at least 100 us apart */
#define MARK_WAIT_NS 2000000ull      /* the longest wait for a mark instead of growing: 2 ms */
#define RECENT_SLOTS 256             /* per-thread memory of recent allocations, for their frees */

enum { BLOCK_FREE, BLOCK_LIVE, BLOCK_CACHED, BLOCK_PENDING };

typedef struct gs_pool_chunk gs_pool_chunk_t;

/* Records are type-stable: once made they are recycled through gs_pool_device_t.spare, never freed,
 * so a stale pointer to one (the per-thread recent table) is safe to read and then re-checked. */
typedef struct gs_pool_block {
    CUdeviceptr base;   /* written and read with __atomic: the recent table reads it unlocked */
    uint64_t size;      /* rounded, what the block spans */
    uint64_t requested; /* what the program asked for (range queries answer this) */
    uint64_t epoch;     /* sync epoch at free (safe reuse) */
    struct gs_pool_block *prev_addr, *next_addr; /* neighbours in the chunk */
    struct gs_pool_block *prev_free, *next_free; /* central free or pending list */
    gs_pool_chunk_t *chunk;
    _Atomic int state;
    _Atomic uint32_t generation; /* bumped at every recycling */
    int device;
    int size_class;          /* class_floor(size), kept for the thread cache */
    uint64_t buffer_id;      /* CU_POINTER_ATTRIBUTE_BUFFER_ID of the allocation it serves now */
    const void *last_thread; /* who made its last allocation or free (for the trace), see pool.c */
} gs_pool_block_t;

struct gs_pool_chunk {
    CUdeviceptr base;
    uint64_t size;
    int heap;        /* HEAP_SMALL or HEAP_LARGE: which free lists its blocks go to */
    bool expandable; /* the large heap's range of mapped virtual memory (pool_vmm.c) */
    bool managed;    /* managed memory (managed mode, or the spill heap) */
    uint64_t on_device, on_host; /* managed: bytes placed within GPUSHIM_DEVICE_LIMIT, past it */
    CUcontext ctx;   /* current when the chunk was allocated: its memory goes with it */
    gs_pool_block_t *first;
    gs_pool_chunk_t *next;
};

/* The last event recorded on a marked stream the program destroyed. */
typedef struct gs_pool_departed {
    CUevent event;
    struct gs_pool_departed *next;
} gs_pool_departed_t;

/* Good-fit segregated free lists over a set of chunks. */
typedef struct gs_pool_heap {
    gs_pool_block_t *free_lists[CLASS_COUNT];
    uint64_t bitmap[BITMAP_WORDS];
    uint64_t reserved; /* bytes of its chunks */
} gs_pool_heap_t;

/* The large heap grows in place (GPUSHIM_POOL_EXPANDABLE, pool_vmm.c): one range of virtual
 * addresses per device, mapped from its start in pieces of physical memory (one cuMemCreate
 * each), unmapped from the end when the pool gives memory back. The chunk that spans
 * the mapped part grows with it, so blocks may span pieces and growth leaves no chunk boundary. */
typedef struct gs_pool_vmm {
    CUdeviceptr base; /* the range; 0 if none was reserved (then off says why) */
    const char *off;  /* why the heap does not grow in place; NULL (once set up): it does */
    uint64_t range, mapped, granularity;
    gs_pool_chunk_t *chunk; /* spans [base, base + mapped); NULL while nothing is mapped */
    uint64_t *pieces;       /* the sizes of the mappings, in address order */
    unsigned count, capacity;
    CUmemAccessDesc access[GS_MAX_DEVICES]; /* this device, and peers that can reach it */
    unsigned access_count;
} gs_pool_vmm_t;

typedef struct gs_pool_device {
    pthread_mutex_t lock;
    atomic_bool ready;
    /* Managed mode: every chunk is managed memory (pool_managed.c), max is GPUSHIM_MANAGED_LIMIT.
     * spill: pool mode with GPUSHIM_ON_OOM=managed (HEAP_SPILL), up to spill_max. */
    bool managed, spill;
    uint64_t spill_max;
    /* Reserved bytes at the peak of device and spilled together, and how they split. */
    uint64_t both_peak, both_peak_device, both_peak_spilled;
    uint64_t spilled_allocations, spilled_bytes; /* served from the spill heap's free lists */
    uint64_t prefetches, refused_at_cap;        /* managed chunks */
    uint64_t total, max, chunk_size, pending_max, pitch_align;
    uint64_t initial;           /* the GPUSHIM_POOL_INITIAL chunk's size, 0 without one */
    uint64_t release_threshold; /* free bytes kept at the program's synchronizations */
    uint64_t cache_budget; /* bytes of small blocks a thread cache holds: CACHE_BYTES_IMMEDIATE,
                              or under safe reuse CACHE_BYTES but at most
                              GPUSHIM_POOL_PENDING_MAX (they may be pending) */
    gs_pool_chunk_t *chunks;
    gs_pool_heap_t heaps[HEAPS];
    gs_pool_vmm_t vmm;
    gs_pool_block_t *pending; /* central pending list (safe reuse) */
    gs_pool_block_t *spare;   /* recycled records */
    uint64_t pending_bytes, free_bytes, reserved, reserved_peak, chunk_count;
    uint64_t releases, grow_calls;
    _Atomic uint64_t shim_syncs, shim_sync_ns;
    _Atomic uint64_t epoch;          /* frees are stamped with this */
    _Atomic uint64_t completed;      /* every free stamped <= this is safe to reuse */
    uint64_t recycled_upto;          /* completed when the pending list was last recycled */
    atomic_bool syncing;             /* a thread is in a cheap synchronization */
    _Atomic uint64_t no_cheap_until; /* CLOCK_MONOTONIC ns: back-off after a slow one */
    _Atomic uint64_t backoff_ns;     /* the next back-off */
    /* Marks in flight, oldest first (GPUSHIM_POOL_EVENTS): events on the legacy default stream,
     * each covering the frees stamped up to its token; ring slots keep their event. */
    struct {
        CUevent event;
        uint64_t token, recorded_ns; /* CLOCK_MONOTONIC */
    } marks[MARKS];
    unsigned mark_head, mark_count;
    pthread_mutex_t departed_lock; /* a leaf lock: taken under the stream registry's */
    gs_pool_departed_t *departed;  /* events of destroyed marked streams, still queued */
    /* The driver refused an event (a mark's, or a destroyed stream's last one, recorded without
     * the device lock): asynchronous reuse is off until the context is reset. */
    atomic_bool event_broken;
    uint64_t event_recycles; /* events that completed and made pending blocks reusable */
    /* Waits for the GPU to pass the mark in flight instead of growing (see wait_for_mark): how
     * many, how many gave up, their time, and the back-off after one gives up. */
    uint64_t mark_waits, mark_waits_given_up, mark_wait_ns;
    uint64_t mark_wait_until, mark_wait_backoff_ns; /* CLOCK_MONOTONIC ns */
    /* Bumped when the device's context is reset: thread caches filled before then hold records
     * of blocks that no longer exist, and drop them unread. */
    _Atomic uint64_t generation;
} gs_pool_device_t;

extern gs_pool_device_t gs_pools[GS_MAX_DEVICES];

/* ---- size classes ---------------------------------------------------------------------- */

static inline uint64_t round_up(uint64_t x, uint64_t to)
{
    return (x + to - 1) / to * to;
}

static inline int class_floor(uint64_t size)
{
    int fl = 63 - __builtin_clzll(size);
    int sl = (int)((size >> (fl - SL_BITS)) & ((1 << SL_BITS) - 1));
    int index = ((fl - MIN_FL) << SL_BITS) + sl;
    return index < CLASS_COUNT ? index : CLASS_COUNT - 1;
}

/* The first class whose every block is at least size. */
static inline int class_ceil(uint64_t size)
{
    int fl = 63 - __builtin_clzll(size);
    return class_floor(size + (1ull << (fl - SL_BITS)) - 1);
}

/* The block spans its whole chunk (one cuMemAlloc of the driver's, as the program would see it). */
static inline bool whole_chunk(const gs_pool_block_t *b)
{
    return !b->chunk->expandable && b->base == b->chunk->base && b->size == b->chunk->size;
}

static inline bool reusable(const gs_pool_device_t *p, const gs_pool_block_t *b)
{
    return gs_opts.pool_reuse == GS_REUSE_IMMEDIATE ||
           b->epoch <= atomic_load_explicit(&p->completed, memory_order_acquire);
}

/* The epoch a free is stamped with: the device's current one, or, while no GPU work was issued
 * since the latest mark or synchronization (gs_work_quiet_token, GPUSHIM_POOL_IDLE_REUSE), that
 * one's token, so the block is reusable as soon as it has completed. The token counts only if it
 * is the latest taken (epoch = token + 1): an older one's point may not cover the work issued
 * before a newer point was taken, and completed may reach its value through that newer point. */
static inline uint64_t gs_pool_free_epoch(gs_pool_device_t *p, int device, bool *quiet)
{
    uint64_t token; /* the word is set only under GPUSHIM_POOL_IDLE_REUSE=auto */
    bool idle = gs_work_quiet_token(device, &token);
    /* Read after the quiet word (both sequentially consistent). */
    uint64_t epoch = atomic_load(&p->epoch);
    *quiet = idle && token + 1 == epoch;
    return *quiet ? token : epoch;
}

/* pool_central.c; "lock held" means the device's lock. */
void gs_pool_device_init(gs_pool_device_t *p, int device); /* lock held */
/* The slow path: the free lists, synchronization (safe reuse), growth, release, out of memory. */
CUresult gs_pool_central_alloc(gs_pool_device_t *p, int device, uint64_t size,
                               gs_pool_block_t **out);
void gs_pool_release(gs_pool_device_t *p, gs_pool_block_t *b); /* lock held */
/* The device's context was reset and the driver freed every chunk: forget them (lock held). */
void gs_pool_forget_chunks(gs_pool_device_t *p);
/* Empties the destroyed streams' event list; destroy_events: with a driver call each (tests; a
 * reset context took them along). */
void gs_pool_drop_departed(gs_pool_device_t *p, bool destroy_events);
/* After cuCtxDestroy (lock held): 1 if every chunk came from ctx, -1 if some did, else 0; the
 * expandable range belongs to no context. */
int gs_pool_chunks_of_context(const gs_pool_device_t *p, CUcontext ctx);
void gs_pool_forget_streams(int device); /* the same, for its marked streams' state; no lock */
bool gs_pool_sync_if_cheap(gs_pool_device_t *p, int device);
uint64_t gs_pool_before_sync(int device);
void gs_pool_after_sync(int device, uint64_t token);
/* Why asynchronous reuse by events is off on this device, or NULL if it is on (safe reuse). */
const char *gs_pool_events_off_reason(const gs_pool_device_t *p);
void gs_pool_stream_destroying(int device, CUstream stream, void **slot);
/* pool_vmm.c, lock held. Reserves the device's range, or says why not in vmm.off. */
void gs_pool_vmm_init(gs_pool_device_t *p, int device);
/* Maps bytes (a multiple of the granularity) more at the end of the range. */
CUresult gs_pool_vmm_map(gs_pool_device_t *p, int device, uint64_t bytes);
/* Unmaps pieces that lie wholly at or past offset from, last first, until unmap_max bytes or
 * more are unmapped; returns the bytes unmapped. */
uint64_t gs_pool_vmm_unmap_from(gs_pool_device_t *p, int device, uint64_t from, uint64_t unmap_max);
/* Unmaps every piece (a reset context, a destroyed one); the range stays reserved. */
void gs_pool_vmm_unmap_all(gs_pool_device_t *p);

/* pool_managed.c, lock held. */
/* Device memory for a chunk (charged to GPUSHIM_DEVICE_LIMIT), or managed memory for a managed
 * one; and back. */
CUresult gs_pool_chunk_take(gs_pool_device_t *p, int device, gs_pool_chunk_t *c, CUdeviceptr *base,
                            uint64_t size);
CUresult gs_pool_chunk_give_back(int device, gs_pool_chunk_t *c);
/* The chunk's memory is gone with its context: its budget goes too. */
void gs_pool_chunk_forget(int device, gs_pool_chunk_t *c);
void gs_pool_managed_report(gs_pool_device_t *p, int device, gs_buf_t *out, bool json);

/* pool.c: under memory pressure (lock held), every thread cache of the device is emptied. */
void gs_pool_drain_caches(gs_pool_device_t *p, int device);

#endif
