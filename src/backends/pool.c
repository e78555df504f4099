/* pool.c: GPUSHIM_MODE=pool. Synchronous device allocations (cuMemAlloc, cuMemAllocPitch) come
 * from per-device pools that take memory from the driver in chunks; cuMemFree gives blocks back
 * to the pool. Stream-ordered and managed allocations already have CUDA's own pools: they pass
 * through (counted), as in the pass-through backend.
 *
 * Layers, fastest first:
 *   thread cache   per thread and device, a few recently freed blocks per size class, touched
 *                  only by its owner (no locked instruction, no shared cache line: 16 threads
 *                  scale); another thread under memory pressure asks it to drain itself;
 *   central pool   per device, behind a mutex: good-fit segregated free lists (TLSF classes, 8 per
 *                  power of two) over address-ordered blocks that coalesce with free neighbours;
 *   the driver     cuMemAlloc of a new chunk; on failure, wholly free chunks are given back and
 *                  the allocation retried; then CUDA_ERROR_OUT_OF_MEMORY.
 * Every block is in gs_ptrmap (base -> record), so a free is one hashed lookup.
 *
 * Reuse safety (GPUSHIM_POOL_REUSE=safe, the default): cuMemFree guarantees that memory is not
 * reused while GPU work issued before the free may still touch it, by waiting for the device.
 * We keep the guarantee without the wait: a freed block is stamped with the device's current
 * sync epoch and may be handed out again only after a device synchronization that started after
 * the free has completed: the program's own (cuCtxSynchronize, i.e. cudaDeviceSynchronize) or
 * one the shim makes when the pool would otherwise grow while pending bytes could serve, or when
 * pending bytes pass GPUSHIM_POOL_PENDING_MAX. immediate: reuse at once (RMM, PyTorch). */
#include "gs.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define GS_POOL_ALIGN 512ull         /* what cudaMalloc gives in practice (>= the 256 promised) */
#define GS_POOL_GRANULE (2ull << 20) /* chunks are multiples of the driver's 2 MiB pages */
#define SL_BITS 3                    /* 8 classes per power of two: at most 12.5% apart */
#define MIN_FL 9                     /* 512 B */
#define CLASS_COUNT ((48 - MIN_FL) << SL_BITS)
#define BITMAP_WORDS ((CLASS_COUNT + 63) / 64)
/* A thread cache holds, per size class, a FIFO ring of freed blocks: up to CACHE_DEPTH blocks of
 * up to CACHE_BYTES together, and one larger block beside them. Under safe reuse the ring is also
 * where freed blocks wait for a synchronization: 64 of them make one synchronization serve 64
 * allocations. */
#define CACHE_DEPTH 64
#define CACHE_BYTES (32ull << 20)          /* under safe reuse (at most GPUSHIM_POOL_PENDING_MAX) */
#define CACHE_BYTES_IMMEDIATE (8ull << 20) /* no synchronization to amortize: less held idle */
#define CACHE_CLASSES (((25 - MIN_FL) << SL_BITS) + 1) /* classes up to CACHE_BYTES (2^25) */
#define CHEAP_SYNC_NS 50000ull       /* a synchronization this quick means an idle device */
#define BACKOFF_MIN_NS 1000000ull    /* after a slow one, none for 1 ms, doubling ... */
#define BACKOFF_MAX_NS 1000000000ull /* ... up to 1 s */
#define RECENT_SLOTS 256             /* per-thread memory of recent allocations, for their frees */

enum { BLOCK_FREE, BLOCK_LIVE, BLOCK_CACHED, BLOCK_PENDING };

typedef struct pool_chunk pool_chunk_t;

/* Records are type-stable: once made they are recycled through pool_device_t.spare, never freed,
 * so a stale pointer to one (the per-thread recent table) is safe to read and then re-checked. */
typedef struct pool_block {
    CUdeviceptr base;   /* written and read with __atomic: the recent table reads it unlocked */
    uint64_t size;      /* rounded, what the block spans */
    uint64_t requested; /* what the program asked for (range queries answer this) */
    uint64_t epoch;     /* sync epoch at free (safe reuse) */
    struct pool_block *prev_addr, *next_addr; /* neighbours in the chunk */
    struct pool_block *prev_free, *next_free; /* central free or pending list */
    pool_chunk_t *chunk;
    _Atomic int state;
    _Atomic uint32_t generation; /* bumped at every recycling */
    int device;
    int size_class; /* class_floor(size), kept for the thread cache */
} pool_block_t;

struct pool_chunk {
    CUdeviceptr base;
    uint64_t size;
    pool_block_t *first;
    pool_chunk_t *next;
};

typedef struct pool_device {
    pthread_mutex_t lock;
    atomic_bool ready;
    uint64_t total, max, chunk_size, pending_max, pitch_align;
    uint64_t cache_budget; /* bytes of small blocks a thread cache holds: CACHE_BYTES_IMMEDIATE,
                              or under safe reuse CACHE_BYTES but at most
                              GPUSHIM_POOL_PENDING_MAX (they may be pending) */
    pool_chunk_t *chunks;
    pool_block_t *free_lists[CLASS_COUNT];
    uint64_t bitmap[BITMAP_WORDS];
    pool_block_t *pending; /* central pending list (safe reuse) */
    pool_block_t *spare;   /* recycled records */
    uint64_t pending_bytes, free_bytes, reserved, reserved_peak, chunk_count;
    uint64_t releases, grow_calls;
    _Atomic uint64_t shim_syncs, shim_sync_ns;
    _Atomic uint64_t epoch;          /* frees are stamped with this */
    _Atomic uint64_t completed;      /* every free stamped <= this is safe to reuse */
    uint64_t recycled_upto;          /* completed when the pending list was last recycled */
    atomic_bool syncing;             /* a thread is in a cheap synchronization */
    _Atomic uint64_t no_cheap_until; /* CLOCK_MONOTONIC ns: back-off after a slow one */
    _Atomic uint64_t backoff_ns;     /* the next back-off */
} pool_device_t;

typedef struct cache_ring {
    pool_block_t *blocks[CACHE_DEPTH];
    uint8_t head, count; /* oldest first: under safe reuse the first to become reusable */
} cache_ring_t;

typedef struct thread_cache {
    int device;
    _Atomic uint64_t bytes, hits, misses; /* written by the owner only; read by reports */
    uint64_t small_bytes;                 /* bytes of blocks up to CACHE_BYTES: the budget */
    pool_block_t *large;                  /* one block over CACHE_BYTES, outside the budget */
    atomic_bool drain_requested;          /* set by a thread short of memory; the owner drains */
    struct thread_cache *next;
    atomic_bool orphaned;
    cache_ring_t rings[CACHE_CLASSES];
} thread_cache_t;

static pool_device_t gs_pools[GS_MAX_DEVICES];
static thread_cache_t *_Atomic gs_caches; /* all caches ever made, for flushes and the report */
static pthread_mutex_t gs_caches_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t gs_cache_key;
static GS_TLS thread_cache_t *gs_my_caches[GS_MAX_DEVICES];

/* What this thread allocated lately, so that its free needs no shared lookup. */
static GS_TLS struct {
    CUdeviceptr base;
    pool_block_t *block;
    uint32_t generation;
} gs_recent[RECENT_SLOTS];

static inline size_t recent_slot(CUdeviceptr base)
{
    return (size_t)((base >> 9) ^ (base >> 17)) % RECENT_SLOTS;
}

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

/* ---- central free lists (device lock held) ---------------------------------------------- */

static void list_push(pool_device_t *p, pool_block_t *b)
{
    int c = class_floor(b->size);
    b->prev_free = NULL;
    b->next_free = p->free_lists[c];
    if (b->next_free)
        b->next_free->prev_free = b;
    p->free_lists[c] = b;
    p->bitmap[c / 64] |= 1ull << (c % 64);
    p->free_bytes += b->size;
    atomic_store_explicit(&b->state, BLOCK_FREE, memory_order_relaxed);
}

static void list_remove(pool_device_t *p, pool_block_t *b)
{
    int c = class_floor(b->size);
    if (b->prev_free)
        b->prev_free->next_free = b->next_free;
    else
        p->free_lists[c] = b->next_free;
    if (b->next_free)
        b->next_free->prev_free = b->prev_free;
    if (p->free_lists[c] == NULL)
        p->bitmap[c / 64] &= ~(1ull << (c % 64));
    p->free_bytes -= b->size;
}

/* The smallest block of a list that holds size (lowest address among equals), or NULL. */
static pool_block_t *best_in(pool_block_t *list, uint64_t size)
{
    pool_block_t *best = NULL;
    for (pool_block_t *b = list; b; b = b->next_free)
        if (b->size >= size && (best == NULL || b->size < best->size ||
                                (b->size == best->size && b->base < best->base)))
            best = b;
    return best;
}

/* Best fit: the size's own class first (a block there may fit), then the first non-empty class
 * where every block fits, and the smallest block in it. */
static pool_block_t *find_free(pool_device_t *p, uint64_t size)
{
    pool_block_t *b = best_in(p->free_lists[class_floor(size)], size);
    if (b)
        return b;
    for (int c = class_ceil(size); c < CLASS_COUNT;) {
        uint64_t word = p->bitmap[c / 64] & (~0ull << (c % 64));
        if (word)
            return best_in(p->free_lists[(c / 64) * 64 + __builtin_ctzll(word)], size);
        c = (c / 64 + 1) * 64;
    }
    return NULL;
}

static int map_block(pool_block_t *b)
{
    gs_block_t entry = {
        .base = b->base, .bytes = b->size, .device = b->device, .kind = GS_KIND_DEVICE, .owner = b};
    return gs_ptrmap_insert(&entry);
}

static void recycle_block(pool_device_t *p, pool_block_t *b)
{
    __atomic_store_n(&b->base, 0, __ATOMIC_RELAXED);
    atomic_fetch_add_explicit(&b->generation, 1, memory_order_release);
    b->next_free = p->spare;
    p->spare = b;
}

static pool_block_t *new_block(pool_device_t *p, pool_chunk_t *chunk, CUdeviceptr base,
                               uint64_t size, int device)
{
    pool_block_t *b = p->spare;
    if (b)
        p->spare = b->next_free;
    else if ((b = calloc(1, sizeof *b)) == NULL)
        return NULL;
    b->size = size;
    b->requested = 0;
    b->epoch = 0;
    b->prev_addr = b->next_addr = b->prev_free = b->next_free = NULL;
    b->chunk = chunk;
    b->device = device;
    atomic_store_explicit(&b->state, BLOCK_FREE, memory_order_relaxed);
    __atomic_store_n(&b->base, base, __ATOMIC_RELAXED);
    if (map_block(b) != 0) {
        recycle_block(p, b);
        return NULL;
    }
    return b;
}

/* Takes size bytes from the front of free block b; the rest stays free. */
static void carve(pool_device_t *p, pool_block_t *b, uint64_t size)
{
    list_remove(p, b);
    /* LIVE before the lock is dropped, or a neighbour's free could merge it as FREE. */
    atomic_store_explicit(&b->state, BLOCK_LIVE, memory_order_relaxed);
    if (b->size - size >= GS_POOL_ALIGN) {
        pool_block_t *rest = new_block(p, b->chunk, b->base + size, b->size - size, b->device);
        if (rest) {
            rest->prev_addr = b;
            rest->next_addr = b->next_addr;
            if (b->next_addr)
                b->next_addr->prev_addr = rest;
            b->next_addr = rest;
            b->size = size;
            list_push(p, rest);
        }
    }
}

static void merge_into_prev(pool_device_t *p, pool_block_t *prev, pool_block_t *b)
{
    prev->size += b->size;
    prev->next_addr = b->next_addr;
    if (b->next_addr)
        b->next_addr->prev_addr = prev;
    gs_ptrmap_remove(b->base, NULL);
    recycle_block(p, b);
}

/* Returns a block to the central free lists, coalescing with free neighbours. */
static void central_free(pool_device_t *p, pool_block_t *b)
{
    pool_block_t *next = b->next_addr, *prev = b->prev_addr;
    if (next && atomic_load_explicit(&next->state, memory_order_relaxed) == BLOCK_FREE) {
        list_remove(p, next);
        merge_into_prev(p, b, next);
    }
    if (prev && atomic_load_explicit(&prev->state, memory_order_relaxed) == BLOCK_FREE) {
        list_remove(p, prev);
        merge_into_prev(p, prev, b);
        b = prev;
    }
    list_push(p, b);
}

/* ---- safe reuse ------------------------------------------------------------------------- */

static inline bool reusable(pool_device_t *p, const pool_block_t *b)
{
    return gs_opts.pool_reuse == GS_REUSE_IMMEDIATE ||
           b->epoch <= atomic_load_explicit(&p->completed, memory_order_acquire);
}

/* Pending blocks whose free a completed synchronization covers go back to the free lists. */
static void recycle_pending(pool_device_t *p)
{
    p->recycled_upto = atomic_load_explicit(&p->completed, memory_order_acquire);
    pool_block_t **link = &p->pending;
    while (*link) {
        pool_block_t *b = *link;
        if (reusable(p, b)) {
            *link = b->next_free;
            p->pending_bytes -= b->size;
            central_free(p, b);
        } else {
            link = &b->next_free;
        }
    }
}

static uint64_t pool_before_sync(int device)
{
    /* Frees stamped with the old epoch happened before this synchronization started. */
    return atomic_fetch_add_explicit(&gs_pools[device].epoch, 1, memory_order_acq_rel);
}

static void pool_after_sync(int device, uint64_t token)
{
    pool_device_t *p = &gs_pools[device];
    uint64_t done = atomic_load_explicit(&p->completed, memory_order_relaxed);
    while (token > done &&
           !atomic_compare_exchange_weak_explicit(&p->completed, &done, token, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
    }
    if (atomic_load_explicit(&p->ready, memory_order_acquire)) {
        pthread_mutex_lock(&p->lock);
        recycle_pending(p);
        pthread_mutex_unlock(&p->lock);
    }
    gs_backend_managed.after_sync(device, token); /* stream-ordered frees of spilled blocks */
}

/* The shim's own device synchronization: every free stamped before it is safe afterwards.
 * Returns its duration in nanoseconds, or 0 if the driver refused. */
static uint64_t shim_sync(pool_device_t *p, int device)
{
    const gs_driver_t *drv = gs_driver();
    uint64_t start = gs_now_ns();
    uint64_t token = pool_before_sync(device);
    CUresult rc = drv->ctx_synchronize ? GS_DRIVER_CALL(device, drv->ctx_synchronize())
                                       : CUDA_ERROR_NOT_SUPPORTED;
    uint64_t ns = gs_now_ns() - start + 1;
    atomic_fetch_add_explicit(&p->shim_syncs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->shim_sync_ns, ns, memory_order_relaxed);
    if (rc != CUDA_SUCCESS)
        return 0;
    uint64_t done = atomic_load(&p->completed);
    while (token > done && !atomic_compare_exchange_weak(&p->completed, &done, token)) {
    }
    /* A slow one means queued GPU work: no cheap ones for a while (1 ms, twice as long after
     * each further slow one, at most 1 s); quick ones shorten the back-off again. */
    uint64_t backoff = atomic_load_explicit(&p->backoff_ns, memory_order_relaxed);
    if (ns > CHEAP_SYNC_NS) {
        backoff = backoff < BACKOFF_MIN_NS ? BACKOFF_MIN_NS
                                           : (backoff < BACKOFF_MAX_NS ? 2 * backoff : backoff);
        atomic_store_explicit(&p->no_cheap_until, gs_now_ns() + backoff, memory_order_relaxed);
    } else {
        backoff /= 2;
    }
    atomic_store_explicit(&p->backoff_ns, backoff, memory_order_relaxed);
    return ns;
}

/* Device lock held: only when pending bytes are needed. */
static void sync_and_recycle(pool_device_t *p, int device)
{
    if (shim_sync(p, device))
        recycle_pending(p);
}

/* Safe reuse at pool speed in tight loops: a synchronization of an idle device costs a few
 * microseconds, so when a thread's cache holds many pending blocks, one synchronization makes
 * them all reusable. On a busy device it would wait for queued work: after a slow one there are
 * none for a while (see shim_sync) and the pool grows instead. If another thread is
 * synchronizing, waiting for it is as good. Returns whether a synchronization completed. */
static bool sync_if_cheap(pool_device_t *p, int device)
{
    if (gs_opts.pool_reuse != GS_REUSE_SAFE)
        return false;
    uint64_t until = atomic_load_explicit(&p->no_cheap_until, memory_order_relaxed);
    if (until && gs_now_ns() < until)
        return false;
    if (atomic_exchange_explicit(&p->syncing, true, memory_order_acquire)) {
        for (int spins = 0; atomic_load_explicit(&p->syncing, memory_order_acquire); spins++)
            if (spins > 64)
                sched_yield();
        return true;
    }
    bool synced = shim_sync(p, device) != 0;
    atomic_store_explicit(&p->syncing, false, memory_order_release);
    return synced;
}

/* ---- thread caches ---------------------------------------------------------------------- */

#define OWNER_ADD(field, amount)                                                                   \
    atomic_store_explicit(&(field),                                                                \
                          atomic_load_explicit(&(field), memory_order_relaxed) + (amount),         \
                          memory_order_relaxed)

/* A freed block goes to the free lists, or to the pending list until it is safe (lock held). */
static void release_to_pool(pool_device_t *p, pool_block_t *b)
{
    if (reusable(p, b)) {
        central_free(p, b);
        return;
    }
    atomic_store_explicit(&b->state, BLOCK_PENDING, memory_order_relaxed);
    b->next_free = p->pending;
    p->pending = b;
    p->pending_bytes += b->size;
}

/* Empties the caller's own cache into the central pool (device lock held). */
static void cache_drain(pool_device_t *p, thread_cache_t *c)
{
    for (int k = 0; k < CACHE_CLASSES; k++) {
        cache_ring_t *r = &c->rings[k];
        for (; r->count; r->count--, r->head = (uint8_t)((r->head + 1) % CACHE_DEPTH))
            release_to_pool(p, r->blocks[r->head]);
    }
    if (c->large)
        release_to_pool(p, c->large);
    atomic_store_explicit(&c->bytes, 0, memory_order_relaxed);
    c->large = NULL;
    c->small_bytes = 0;
}

static void cache_orphan(void *arg)
{
    (void)arg;
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        thread_cache_t *c = gs_my_caches[d];
        if (c == NULL)
            continue;
        pool_device_t *p = &gs_pools[d];
        pthread_mutex_lock(&p->lock);
        cache_drain(p, c);
        pthread_mutex_unlock(&p->lock);
        atomic_store(&c->orphaned, true);
        gs_my_caches[d] = NULL;
    }
}

static thread_cache_t *my_cache(int device)
{
    thread_cache_t *c = gs_my_caches[device];
    if (__builtin_expect(c != NULL, 1))
        return c;
    pthread_mutex_lock(&gs_caches_lock);
    for (c = atomic_load(&gs_caches); c; c = c->next) { /* reuse a cache of a thread that ended */
        bool expected = true;
        if (c->device == device && atomic_compare_exchange_strong(&c->orphaned, &expected, false))
            break;
    }
    if (c == NULL && (c = calloc(1, sizeof *c)) != NULL) {
        c->device = device;
        c->next = atomic_load(&gs_caches);
        atomic_store(&gs_caches, c);
    }
    pthread_mutex_unlock(&gs_caches_lock);
    if (c) {
        gs_my_caches[device] = c;
        pthread_setspecific(gs_cache_key, c);
    }
    return c;
}

/* A cached block serves size if it holds it without wasting more than 1/8 of itself. */
static inline bool fits(const pool_block_t *b, uint64_t size)
{
    return b->size >= size && b->size - size <= b->size / 8;
}

static pool_block_t *cache_take(pool_device_t *p, thread_cache_t *c, int device, uint64_t size)
{
    if (__builtin_expect(atomic_load_explicit(&c->drain_requested, memory_order_relaxed), 0)) {
        atomic_store(&c->drain_requested, false);
        pthread_mutex_lock(&p->lock);
        cache_drain(p, c);
        pthread_mutex_unlock(&p->lock);
        return NULL;
    }
    pool_block_t *b = NULL;
    if (size > CACHE_BYTES) {
        b = c->large;
        if (b == NULL || !fits(b, size) || !reusable(p, b))
            goto miss; /* large blocks take the central path's synchronization rules */
        c->large = NULL;
    } else {
        int first = class_floor(size);
        cache_ring_t *r = NULL;
        for (int k = first; k <= first + 1 && k < CACHE_CLASSES && b == NULL; k++) {
            r = &c->rings[k];
            if (r->count && fits(r->blocks[r->head], size))
                b = r->blocks[r->head];
        }
        if (b == NULL)
            goto miss;
        /* The oldest block is pending: if the ring is full (or the byte budget is), one
         * synchronization now makes the whole ring reusable. */
        if (!reusable(p, b) &&
            !((r->count == CACHE_DEPTH || c->small_bytes + size > p->cache_budget) &&
              sync_if_cheap(p, device) && reusable(p, b)))
            goto miss;
        r->head = (uint8_t)((r->head + 1) % CACHE_DEPTH);
        r->count--;
        c->small_bytes -= b->size;
    }
    OWNER_ADD(c->bytes, -b->size);
    OWNER_ADD(c->hits, 1);
    return b;
miss:
    OWNER_ADD(c->misses, 1);
    return NULL;
}

static bool cache_put(const pool_device_t *p, thread_cache_t *c, pool_block_t *b)
{
    if (b->size > CACHE_BYTES) {
        /* One large block beside the budget, so a loop that allocates one big buffer again and
         * again never reaches the central pool (under immediate reuse). */
        if (c->large)
            return false;
        c->large = b;
    } else {
        cache_ring_t *r = &c->rings[b->size_class];
        if (r->count == CACHE_DEPTH || c->small_bytes + b->size > p->cache_budget)
            return false;
        r->blocks[(r->head + r->count) % CACHE_DEPTH] = b;
        r->count++;
        c->small_bytes += b->size;
    }
    OWNER_ADD(c->bytes, b->size);
    return true;
}

/* Under memory pressure (device lock held): our own cache goes back to the central pool now;
 * other threads are asked to drain theirs at their next allocation. What they hold meanwhile is
 * bounded by CACHE_BYTES each. */
static void drain_all_caches(pool_device_t *p, int device)
{
    for (thread_cache_t *c = atomic_load(&gs_caches); c; c = c->next)
        if (c->device == device && c != gs_my_caches[device])
            atomic_store_explicit(&c->drain_requested, true, memory_order_relaxed);
    if (gs_my_caches[device])
        cache_drain(p, gs_my_caches[device]);
}

/* ---- growth and release (device lock held) ---------------------------------------------- */

static CUresult grow(pool_device_t *p, int device, uint64_t need)
{
    const gs_driver_t *drv = gs_driver();
    /* Grow by 1/32 of what is reserved already (so unused reserve stays small), between 2 MiB and
     * GPUSHIM_POOL_CHUNK, or by the request if it is larger; never past the maximum. */
    uint64_t step = p->reserved / 32;
    if (step < GS_POOL_GRANULE)
        step = GS_POOL_GRANULE;
    if (step > p->chunk_size)
        step = p->chunk_size;
    uint64_t size = round_up(need > step ? need : step, GS_POOL_GRANULE);
    if (p->reserved + size > p->max) {
        if (p->reserved + round_up(need, GS_POOL_GRANULE) > p->max)
            return CUDA_ERROR_OUT_OF_MEMORY;
        size = round_up(need, GS_POOL_GRANULE);
    }
    pool_chunk_t *chunk = calloc(1, sizeof *chunk);
    if (chunk == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUdeviceptr base = 0;
    p->grow_calls++;
    CUresult rc = drv->mem_alloc ? GS_DRIVER_CALL(device, drv->mem_alloc(&base, size))
                                 : CUDA_ERROR_NOT_SUPPORTED;
    if (rc != CUDA_SUCCESS) {
        free(chunk);
        return rc;
    }
    chunk->base = base;
    chunk->size = size;
    chunk->first = new_block(p, chunk, base, size, device);
    if (chunk->first == NULL) {
        GS_DRIVER_CALL(device, drv->mem_free(base));
        free(chunk);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    chunk->next = p->chunks;
    p->chunks = chunk;
    p->chunk_count++;
    p->reserved += size;
    if (p->reserved > p->reserved_peak)
        p->reserved_peak = p->reserved;
    list_push(p, chunk->first);
    return CUDA_SUCCESS;
}

/* Gives wholly free chunks back to the driver; returns how many. */
static int release_free_chunks(pool_device_t *p, int device)
{
    const gs_driver_t *drv = gs_driver();
    int released = 0;
    for (pool_chunk_t **link = &p->chunks; *link;) {
        pool_chunk_t *c = *link;
        pool_block_t *b = c->first;
        if (b->size != c->size || atomic_load(&b->state) != BLOCK_FREE) {
            link = &c->next;
            continue;
        }
        list_remove(p, b);
        gs_ptrmap_remove(b->base, NULL);
        if (GS_DRIVER_CALL(device, drv->mem_free(c->base)) != CUDA_SUCCESS) {
            list_push(p, b); /* keep it; the driver refused */
            map_block(b);
            link = &c->next;
            continue;
        }
        recycle_block(p, b);
        *link = c->next;
        p->reserved -= c->size;
        p->chunk_count--;
        p->releases++;
        free(c);
        released++;
    }
    return released;
}

/* ---- per-device set-up ------------------------------------------------------------------ */

static void pool_device_init(pool_device_t *p, int device)
{
    const gs_driver_t *drv = gs_driver();
    size_t total = 0;
    if (drv->device_total_mem == NULL || drv->device_total_mem(&total, device) != CUDA_SUCCESS)
        total = 0;
    int align = 0;
    if (drv->device_get_attribute)
        drv->device_get_attribute(&align, CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT, device);
    p->total = total;
    p->max = gs_size_resolve(gs_opts.pool_max, total);
    if (p->max == 0 || (total && p->max > total))
        p->max = total ? total : UINT64_MAX;
    p->chunk_size = gs_size_resolve(gs_opts.pool_chunk, total);
    if (p->chunk_size < GS_POOL_GRANULE)
        p->chunk_size = GS_POOL_GRANULE;
    p->pending_max = gs_size_resolve(gs_opts.pool_pending_max, total);
    p->cache_budget = gs_opts.pool_reuse != GS_REUSE_SAFE ? CACHE_BYTES_IMMEDIATE
                      : p->pending_max < CACHE_BYTES      ? p->pending_max
                                                          : CACHE_BYTES;
    p->pitch_align = (uint64_t)align > GS_POOL_ALIGN ? (uint64_t)align : GS_POOL_ALIGN;
    atomic_store(&p->epoch, 1);
    atomic_store(&p->completed, 0);
    uint64_t initial = gs_size_resolve(gs_opts.pool_initial, total);
    atomic_store_explicit(&p->ready, true, memory_order_release);
    if (initial > 0 && grow(p, device, initial) != CUDA_SUCCESS)
        gs_log_warning("GPUSHIM_POOL_INITIAL: could not reserve %llu bytes on device %d; the pool "
                       "grows on demand",
                       (unsigned long long)initial, device);
}

static pthread_once_t gs_pool_once = PTHREAD_ONCE_INIT;

static void make_cache_key(void)
{
    pthread_key_create(&gs_cache_key, cache_orphan);
}

static void pool_start(void)
{
    pthread_once(&gs_pool_once, make_cache_key);
}

static pool_device_t *pool_for(int device)
{
    pool_device_t *p = &gs_pools[device];
    if (__builtin_expect(!atomic_load_explicit(&p->ready, memory_order_acquire), 0)) {
        pool_start();
        pthread_mutex_lock(&p->lock);
        if (!atomic_load_explicit(&p->ready, memory_order_relaxed))
            pool_device_init(p, device);
        pthread_mutex_unlock(&p->lock);
    }
    return p;
}

/* ---- the backend operations ------------------------------------------------------------- */

/* The slow path: the central pool, then synchronization (safe reuse), then growth, then
 * release of free chunks and caches, then out of memory. */
static CUresult central_alloc(pool_device_t *p, int device, uint64_t size, pool_block_t **out)
{
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&p->lock);
    if (p->pending && p->recycled_upto < atomic_load_explicit(&p->completed, memory_order_acquire))
        recycle_pending(p); /* a cheap synchronization covered some since */
    pool_block_t *b = find_free(p, size);
    /* Synchronize rather than grow when pending bytes could serve and are many: past the bound,
     * past 1/16 of the pool, or where growth would pass the maximum. */
    if (b == NULL && p->pending_bytes >= size &&
        (p->pending_bytes >= p->pending_max || p->pending_bytes >= p->reserved / 16 ||
         p->reserved + size > p->max)) {
        sync_and_recycle(p, device);
        b = find_free(p, size);
    }
    if (b == NULL && p->pending_bytes >= size && sync_if_cheap(p, device)) {
        recycle_pending(p);
        b = find_free(p, size);
    }
    if (b == NULL) {
        rc = grow(p, device, size);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            /* Memory is short: everything free anywhere goes back, then one more try. */
            drain_all_caches(p, device);
            if (p->pending_bytes)
                sync_and_recycle(p, device);
            b = find_free(p, size);
            if (b == NULL && release_free_chunks(p, device) >= 0)
                rc = grow(p, device, size);
        }
        if (b == NULL && rc == CUDA_SUCCESS)
            b = find_free(p, size);
    }
    if (b) {
        carve(p, b, size);
        rc = CUDA_SUCCESS;
    } else if (rc == CUDA_SUCCESS) {
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_unlock(&p->lock);
    *out = b;
    return rc;
}

static CUresult pool_alloc(const gs_alloc_req_t *req, CUdeviceptr *ptr, size_t *pitch,
                           gs_block_t *block)
{
    if (req->kind == GS_KIND_ASYNC || req->kind == GS_KIND_MANAGED)
        return gs_backend_passthrough.alloc(req, ptr, pitch, block);
    pool_device_t *p = pool_for(req->device);
    uint64_t requested = req->bytes;
    if (req->kind == GS_KIND_PITCH && gs_pitch_layout(req, p->pitch_align, pitch, &requested))
        return CUDA_ERROR_INVALID_VALUE; /* the device's pitch alignment */
    if (requested == 0)
        return CUDA_ERROR_INVALID_VALUE; /* as cuMemAlloc(0) */
    uint64_t size = round_up(requested, GS_POOL_ALIGN);
    thread_cache_t *cache = my_cache(req->device);
    pool_block_t *b = cache ? cache_take(p, cache, req->device, size) : NULL;
    if (b == NULL) {
        CUresult rc = central_alloc(p, req->device, size, &b);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY && gs_opts.on_oom == GS_ON_OOM_MANAGED)
            return gs_managed_spill(req, ptr, pitch, block); /* GPUSHIM_ON_OOM=managed */
        if (rc != CUDA_SUCCESS)
            return rc;
        b->size_class = class_floor(b->size); /* a block from the pool: its size may be new */
    }
    b->requested = requested;
    atomic_store_explicit(&b->state, BLOCK_LIVE, memory_order_release); /* from CACHED */
    *ptr = b->base;
    size_t slot = recent_slot(b->base);
    gs_recent[slot].base = b->base;
    gs_recent[slot].block = b;
    gs_recent[slot].generation = atomic_load_explicit(&b->generation, memory_order_relaxed);
    *block = (gs_block_t){
        .base = b->base, .bytes = requested, .device = req->device, .kind = req->kind, .owner = b};
    return CUDA_SUCCESS;
}

/* Claims the live block at ptr for freeing (LIVE -> CACHED). */
static inline bool claim(pool_block_t *b, CUdeviceptr ptr)
{
    int live = BLOCK_LIVE;
    return __atomic_load_n(&b->base, __ATOMIC_RELAXED) == ptr &&
           atomic_compare_exchange_strong(&b->state, &live, BLOCK_CACHED);
}

static int pool_free(CUdeviceptr ptr, const gs_free_req_t *req, CUresult *result, gs_block_t *block)
{
    /* Fast: this thread allocated it lately. The generation tells whether the record still
     * describes that block: a live block's record cannot be recycled, so if the generation is
     * unchanged and the block is live, it is the one at ptr. Otherwise the map decides. */
    size_t slot = recent_slot(ptr);
    pool_block_t *b = NULL;
    if (gs_recent[slot].base == ptr &&
        atomic_load_explicit(&gs_recent[slot].block->generation, memory_order_acquire) ==
            gs_recent[slot].generation)
        b = gs_recent[slot].block;
    gs_recent[slot].base = 0;
    if (b == NULL || !claim(b, ptr)) {
        gs_block_t entry;
        if (gs_ptrmap_find(ptr, &entry) != 0)
            return GS_NOT_OURS;
        if (entry.owner == gs_managed_owner) /* spilled to managed memory */
            return gs_backend_managed.free(ptr, req, result, block);
        b = entry.owner;
        if (b == NULL) /* a stream-ordered or managed allocation we passed through */
            return gs_backend_passthrough.free(ptr, req, result, block);
        if (!claim(b, ptr)) {
            *result = CUDA_ERROR_INVALID_VALUE; /* double free: what the driver says */
            block->base = 0;
            return 0;
        }
    }
    pool_device_t *p = &gs_pools[b->device];
    *block = (gs_block_t){.base = b->base,
                          .bytes = b->requested,
                          .device = b->device,
                          .kind = GS_KIND_DEVICE,
                          .owner = b};
    *result = CUDA_SUCCESS;
    /* Stamp before publishing: a synchronization that starts after this covers the free. */
    b->epoch = atomic_load_explicit(&p->epoch, memory_order_acquire);
    thread_cache_t *cache = my_cache(b->device);
    if (cache && cache_put(p, cache, b))
        return 0;
    pthread_mutex_lock(&p->lock);
    release_to_pool(p, b);
    pthread_mutex_unlock(&p->lock);
    (void)req; /* a stream-ordered free of a pool block: the same epoch rule covers it */
    return 0;
}

/* The live pool block containing ptr (interior pointers too), or NULL. */
static pool_block_t *containing(CUdeviceptr ptr)
{
    gs_block_t entry;
    if (gs_ptrmap_find(ptr, &entry) == 0) {
        if (entry.owner == NULL || entry.owner == gs_managed_owner)
            return NULL; /* passed through or spilled: the driver describes it */
        pool_block_t *b = entry.owner;
        return atomic_load(&b->state) == BLOCK_LIVE ? b : NULL;
    }
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        pool_device_t *p = &gs_pools[d];
        if (!atomic_load(&p->ready))
            continue;
        pool_block_t *found = NULL;
        pthread_mutex_lock(&p->lock);
        for (pool_chunk_t *c = p->chunks; c && !found; c = c->next) {
            if (ptr < c->base || ptr >= c->base + c->size)
                continue;
            for (pool_block_t *b = c->first; b; b = b->next_addr)
                if (ptr >= b->base && ptr < b->base + b->size) {
                    found = atomic_load(&b->state) == BLOCK_LIVE ? b : NULL;
                    break;
                }
        }
        pthread_mutex_unlock(&p->lock);
        if (found)
            return found;
    }
    return NULL;
}

static int pool_address_range(CUdeviceptr ptr, CUdeviceptr *base, size_t *size, CUresult *result)
{
    pool_block_t *b = containing(ptr);
    if (b == NULL || ptr >= b->base + b->requested)
        return GS_NOT_OURS;
    if (base)
        *base = b->base;
    if (size)
        *size = b->requested;
    *result = CUDA_SUCCESS;
    return 0;
}

static int pool_pointer_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr,
                                  CUresult *result)
{
    if (attr != CU_POINTER_ATTRIBUTE_RANGE_START_ADDR && attr != CU_POINTER_ATTRIBUTE_RANGE_SIZE)
        return GS_NOT_OURS;
    pool_block_t *b = containing(ptr);
    if (b == NULL)
        return GS_NOT_OURS;
    if (attr == CU_POINTER_ATTRIBUTE_RANGE_START_ADDR)
        *(CUdeviceptr *)data = b->base;
    else
        *(size_t *)data = b->requested;
    *result = CUDA_SUCCESS;
    return 0;
}

/* Differs from CUDA on purpose: the driver would hand out the handle of the whole chunk for a
 * block inside it, and the importer would read the wrong memory. */
static int pool_ipc_handle(CUipcMemHandle *handle, CUdeviceptr ptr, CUresult *result)
{
    (void)handle;
    pool_block_t *b = containing(ptr);
    if (b == NULL || (b->base == b->chunk->base && b->size == b->chunk->size))
        return GS_NOT_OURS; /* not ours, or a whole chunk: the driver's handle is right */
    gs_log_warning("cuIpcGetMemHandle refused (CUDA_ERROR_INVALID_VALUE): %#llx is a block inside "
                   "a pool chunk, and its handle would map the whole chunk; run this program with "
                   "GPUSHIM_MODE=off to share memory by IPC",
                   (unsigned long long)ptr);
    *result = CUDA_ERROR_INVALID_VALUE;
    return 0;
}

static uint64_t cached_bytes(int device)
{
    uint64_t bytes = 0;
    for (thread_cache_t *c = atomic_load(&gs_caches); c; c = c->next)
        if (c->device == device)
            bytes += atomic_load_explicit(&c->bytes, memory_order_relaxed);
    return bytes;
}

/* What the program can still get: the driver's free memory plus every pool byte not in use. */
static int pool_mem_get_info(size_t *free_bytes, size_t *total_bytes, CUresult *result)
{
    const gs_driver_t *drv = gs_driver();
    int device = gs_current_device();
    pool_device_t *p = &gs_pools[device];
    *result =
        drv->mem_get_info ? drv->mem_get_info(free_bytes, total_bytes) : CUDA_ERROR_NOT_SUPPORTED;
    if (*result != CUDA_SUCCESS || !atomic_load(&p->ready))
        return 0;
    pthread_mutex_lock(&p->lock);
    uint64_t idle = p->free_bytes + p->pending_bytes;
    pthread_mutex_unlock(&p->lock);
    idle += cached_bytes(device);
    *free_bytes += idle;
    if (*free_bytes > *total_bytes)
        *free_bytes = *total_bytes;
    return 0;
}

static void pool_report(int device, gs_buf_t *out, bool json)
{
    pool_device_t *p = &gs_pools[device];
    if (!atomic_load(&p->ready))
        return;
    uint64_t hits = 0, misses = 0;
    for (thread_cache_t *c = atomic_load(&gs_caches); c; c = c->next)
        if (c->device == device) {
            hits += atomic_load_explicit(&c->hits, memory_order_relaxed);
            misses += atomic_load_explicit(&c->misses, memory_order_relaxed);
        }
    gs_device_stats_t s;
    gs_stats_snapshot(device, &s);
    uint64_t served = hits + misses, cached = cached_bytes(device);
    double ratio = s.peak > 0 ? (double)p->reserved_peak / (double)s.peak : 0.0;
    pthread_mutex_lock(&p->lock);
    uint64_t largest = 0;
    for (int c = CLASS_COUNT - 1; c >= 0 && largest == 0; c--)
        for (pool_block_t *b = p->free_lists[c]; b; b = b->next_free)
            if (b->size > largest)
                largest = b->size;
    const char *reuse = gs_opts.pool_reuse == GS_REUSE_SAFE ? "safe" : "immediate";
    uint64_t syncs = atomic_load(&p->shim_syncs);
    double sync_mean_us = syncs ? (double)atomic_load(&p->shim_sync_ns) / (double)syncs / 1e3 : 0;
    if (json) {
        gs_buf_printf(
            out,
            ",\n      \"pool\": {\"reserved\": %llu, \"reserved_peak\": %llu, "
            "\"chunks\": %llu, \"driver_allocations\": %llu, \"chunks_given_back\": %llu, "
            "\"peak_reserved_over_peak_in_use\": %.4f, \"cache_hits\": %llu, "
            "\"pool_allocations\": %llu, \"reuse\": \"%s\", \"pending\": %llu, "
            "\"shim_synchronizations\": %llu, \"shim_synchronization_mean_us\": %.1f, "
            "\"cached_in_threads\": %llu, "
            "\"largest_free_block\": %llu}",
            (unsigned long long)p->reserved, (unsigned long long)p->reserved_peak,
            (unsigned long long)p->chunk_count, (unsigned long long)p->grow_calls,
            (unsigned long long)p->releases, ratio, (unsigned long long)hits,
            (unsigned long long)served, reuse, (unsigned long long)p->pending_bytes,
            (unsigned long long)syncs, sync_mean_us, (unsigned long long)cached,
            (unsigned long long)largest);
    } else {
        char reserved[32], peak[32], pending[32], large[32], cached_text[32];
        gs_buf_printf(
            out,
            "gpushim: device %d: pool reserved %s now, peak %s, in %llu chunks; %llu "
            "driver allocations, %llu chunks given back; peak reserved / peak in use %.3f\n",
            device, gs_format_bytes(p->reserved, reserved), gs_format_bytes(p->reserved_peak, peak),
            (unsigned long long)p->chunk_count, (unsigned long long)p->grow_calls,
            (unsigned long long)p->releases, ratio);
        gs_buf_printf(out,
                      "gpushim: device %d: pool hit rate %.1f%% (%llu of %llu allocations from "
                      "thread caches, the rest from the pool's free lists or new chunks); %.1f%% "
                      "of allocations needed the driver\n",
                      device, served ? 100.0 * (double)hits / (double)served : 0.0,
                      (unsigned long long)hits, (unsigned long long)served,
                      served ? 100.0 * (double)p->grow_calls / (double)served : 0.0);
        gs_buf_printf(out,
                      "gpushim: device %d: pool reuse %s; pending %s, %llu synchronizations made "
                      "by the shim (%.1f us each); cached in threads %s; largest free block %s\n",
                      device, reuse, gs_format_bytes(p->pending_bytes, pending),
                      (unsigned long long)syncs, sync_mean_us, gs_format_bytes(cached, cached_text),
                      gs_format_bytes(largest, large));
    }
    pthread_mutex_unlock(&p->lock);
    gs_backend_managed.report(device, out, json); /* what spilled, if anything */
}

/* Entries of the map that are not pool blocks (passed through, spilled) are live while they are
 * in the map; a pool block is live while handed out, with the size the program asked for. */
static uint64_t pool_live_bytes(const gs_block_t *block)
{
    if (block->owner == NULL || block->owner == gs_managed_owner)
        return block->bytes;
    pool_block_t *b = block->owner;
    return atomic_load(&b->state) == BLOCK_LIVE ? b->requested : 0;
}

/* Fork child: the parent's device memory is not ours to use. Host records are dropped (leaked:
 * freeing them safely would need locks another thread may have held at the fork). */
static void pool_forget(void)
{
    memset(gs_pools, 0, sizeof gs_pools);
    for (int d = 0; d < GS_MAX_DEVICES; d++)
        pthread_mutex_init(&gs_pools[d].lock, NULL);
    atomic_store(&gs_caches, NULL);
    pthread_mutex_init(&gs_caches_lock, NULL);
    memset(gs_my_caches, 0, sizeof gs_my_caches);
    memset(gs_recent, 0, sizeof gs_recent);
    gs_backend_managed.forget(); /* spilled blocks; clears gs_ptrmap too */
}

/* Tests: frees every host record (single-threaded; device memory is the fake's business). */
void gs_pool_destroy(void)
{
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        for (pool_chunk_t *c = gs_pools[d].chunks, *next; c; c = next) {
            next = c->next;
            for (pool_block_t *b = c->first, *after; b; b = after) {
                after = b->next_addr;
                free(b);
            }
            free(c);
        }
        for (pool_block_t *b = gs_pools[d].spare, *after; b; b = after) {
            after = b->next_free;
            free(b);
        }
    }
    for (thread_cache_t *c = atomic_load(&gs_caches), *next; c; c = next) {
        next = c->next;
        free(c);
    }
    pool_forget();
}

const gs_backend_t gs_backend_pool = {
    .name = "pool",
    .start = pool_start,
    .alloc = pool_alloc,
    .free = pool_free,
    .mem_get_info = pool_mem_get_info,
    .address_range = pool_address_range,
    .pointer_attribute = pool_pointer_attribute,
    .ipc_handle = pool_ipc_handle,
    .before_sync = pool_before_sync,
    .after_sync = pool_after_sync,
    .report = pool_report,
    .live_bytes = pool_live_bytes,
    .forget = pool_forget,
};
