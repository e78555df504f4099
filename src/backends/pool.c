/* pool.c: GPUSHIM_MODE=pool and GPUSHIM_MODE=managed. Synchronous device allocations
 * (cuMemAlloc, cuMemAllocPitch) come from per-device pools that take memory from the driver in
 * chunks; cuMemFree gives blocks back to the pool. In pool mode, stream-ordered and managed
 * allocations already have CUDA's own pools: they pass through (counted), as in the pass-through
 * backend. In managed mode the chunks are managed memory (pool_managed.c), and stream-ordered
 * allocations and the program's own cuMemAllocManaged (global attach) come from the pool too.
 *
 * Layers, fastest first:
 *   thread cache   (here) per thread and device: the latest freed block, then a FIFO queue of
 *                  freed blocks per size class, touched only by its owner (no locked
 *                  instruction, no shared cache line: 16 threads scale); another thread under
 *                  memory pressure asks it to drain itself;
 *   central pool   (pool_central.c) per device, behind a mutex: good-fit segregated free lists
 *                  (TLSF classes, 8 per power of two) over address-ordered blocks that coalesce
 *                  with free neighbours, in two heaps: blocks under 256 KiB have chunks of their
 *                  own;
 *   the driver     cuMemAlloc of a new chunk; on failure, wholly free chunks are given back and
 *                  the allocation retried; then CUDA_ERROR_OUT_OF_MEMORY.
 * Every block is in gs_ptrmap (base -> record), so a free is one hashed lookup.
 *
 * Reuse safety (GPUSHIM_POOL_REUSE=safe, the default): cuMemFree guarantees that memory is not
 * reused while GPU work issued before the free may still touch it, by waiting for the device.
 * We keep the guarantee without the wait: a freed block is stamped with the device's current
 * sync epoch and may be handed out again only after a device synchronization that started after
 * the free has completed: the program's own (cuCtxSynchronize, i.e. cudaDeviceSynchronize) or
 * one the shim makes: when a thread's queue is full of pending blocks and synchronizations are
 * cheap (an idle device), before the pool grows, or when pending bytes pass
 * GPUSHIM_POOL_PENDING_MAX (pool_central.c says when exactly). immediate: reuse at once (RMM,
 * PyTorch). */
#include "core/express.h"
#include "gs.h"
#include "pool_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* A first-in first-out queue of cached blocks, linked through their next_free field (free while
 * a block is in a thread cache: the central lists use it only for FREE and PENDING blocks), so a
 * deep queue costs no memory of its own. */
typedef struct cache_queue {
    gs_pool_block_t *head, *tail; /* oldest first: under safe reuse the first to become reusable */
    uint32_t count;
} cache_queue_t;

typedef struct thread_cache {
    int device;
    /* Written by the owner only, read by reports and cuMemGetInfo. small_bytes: blocks in the
     * queues (within the budget); slot_bytes: the blocks in last and large. */
    _Atomic uint64_t small_bytes, slot_bytes, hits, misses;
    _Atomic uint64_t quiet_frees;  /* frees while no GPU work was in flight (safe reuse) */
    _Atomic uint64_t generation;   /* the pool's generation when last checked (see discard_stale) */
    uint64_t id_base, allocations; /* for buffer IDs: which cache (top bits), how many it served */
    gs_pool_block_t *last;         /* the latest freed block, not yet in a queue (see cache_put) */
    gs_pool_block_t *large;        /* one block beyond the budget */
    atomic_bool drain_requested;   /* set by a thread short of memory; the owner drains */
    struct thread_cache *next;
    atomic_bool orphaned;
    cache_queue_t queues[CACHE_CLASSES];
} thread_cache_t;

static thread_cache_t *_Atomic gs_caches; /* all caches ever made, for flushes and the report */
static pthread_mutex_t gs_caches_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t gs_cache_key;
static GS_TLS thread_cache_t *gs_my_caches[GS_MAX_DEVICES];

/* What this thread allocated lately, so that its free needs no shared lookup: the latest
 * allocation while it is live (a pair needs no hashing), then a table by address. The table's
 * address also names the thread in gs_pool_block_t.last_thread (for gs_block_t.same_thread):
 * unique among live threads; a thread that reuses a dead one's (glibc recycles thread memory)
 * starts with fresh TLS, so the trace reads the clock at its first event anyway. */
typedef struct recent {
    CUdeviceptr base; /* 0: empty */
    gs_pool_block_t *block;
    uint32_t generation;
} recent_t;

static GS_TLS recent_t gs_latest;
static GS_TLS recent_t gs_recent[RECENT_SLOTS];

static inline size_t recent_slot(CUdeviceptr base)
{
    return (size_t)((base >> 9) ^ (base >> 17)) % RECENT_SLOTS;
}

/* Remembers b as this thread's latest allocation. */
static inline void remember(gs_pool_block_t *b)
{
    if (gs_latest.base != 0)
        gs_recent[recent_slot(gs_latest.base)] = gs_latest;
    gs_latest =
        (recent_t){.base = b->base,
                   .block = b,
                   .generation = atomic_load_explicit(&b->generation, memory_order_relaxed)};
}

/* The block this thread allocated lately at ptr, or NULL: the map decides. Forgets it either
 * way. The generation tells whether the record still describes that block: a live block's
 * record cannot be recycled, so if the generation is unchanged and the block is live, it is the
 * one at ptr. */
static inline gs_pool_block_t *recall(CUdeviceptr ptr)
{
    recent_t *r = &gs_latest;
    if (r->base != ptr) {
        r = &gs_recent[recent_slot(ptr)];
        if (r->base != ptr)
            return NULL;
    }
    r->base = 0;
    if (atomic_load_explicit(&r->block->generation, memory_order_acquire) != r->generation)
        return NULL;
    return r->block;
}

/* ---- thread caches ---------------------------------------------------------------------- */

#define OWNER_ADD(field, amount)                                                                   \
    atomic_store_explicit(&(field),                                                                \
                          atomic_load_explicit(&(field), memory_order_relaxed) + (amount),         \
                          memory_order_relaxed)

/* The device's context was reset since this cache was last used (owner only): its records now
 * describe other blocks or none, so they are dropped unread. Returns whether it was stale. */
static inline bool discard_stale(const gs_pool_device_t *p, thread_cache_t *c)
{
    uint64_t now = atomic_load_explicit(&p->generation, memory_order_acquire);
    if (__builtin_expect(atomic_load_explicit(&c->generation, memory_order_relaxed) == now, 1))
        return false;
    memset(c->queues, 0, sizeof c->queues);
    c->last = c->large = NULL;
    atomic_store_explicit(&c->small_bytes, 0, memory_order_relaxed);
    atomic_store_explicit(&c->slot_bytes, 0, memory_order_relaxed);
    atomic_store_explicit(&c->generation, now, memory_order_relaxed);
    return true;
}

/* Empties the caller's own cache into the central pool (device lock held). */
static void cache_drain(gs_pool_device_t *p, thread_cache_t *c)
{
    if (discard_stale(p, c))
        return;
    for (int k = 0; k < CACHE_CLASSES; k++) {
        cache_queue_t *r = &c->queues[k];
        for (gs_pool_block_t *b = r->head, *next; b; b = next) {
            next = b->next_free; /* the release reuses the field */
            gs_pool_release(p, b);
        }
        r->head = r->tail = NULL;
        r->count = 0;
    }
    if (c->last)
        gs_pool_release(p, c->last);
    if (c->large)
        gs_pool_release(p, c->large);
    c->last = c->large = NULL;
    atomic_store_explicit(&c->small_bytes, 0, memory_order_relaxed);
    atomic_store_explicit(&c->slot_bytes, 0, memory_order_relaxed);
}

static void cache_orphan(void *arg)
{
    (void)arg;
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        thread_cache_t *c = gs_my_caches[d];
        if (c == NULL)
            continue;
        gs_pool_device_t *p = &gs_pools[d];
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
    static uint64_t caches_made;
    if (c == NULL && (c = calloc(1, sizeof *c)) != NULL) {
        c->device = device;
        c->id_base = 1ull << 63 | (++caches_made & 0x7fffff) << 40; /* under gs_caches_lock */
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
static inline bool fits(const gs_pool_block_t *b, uint64_t size)
{
    return b->size >= size && b->size - size <= b->size / 8;
}

/* The cache may serve this thread now: the device's context was not reset since it was filled
 * (else its records are dropped) and no thread short of memory asked for it back. */
static inline bool cache_usable(const gs_pool_device_t *p, thread_cache_t *c)
{
    return atomic_load_explicit(&c->generation, memory_order_relaxed) ==
               atomic_load_explicit(&p->generation, memory_order_acquire) &&
           !atomic_load_explicit(&c->drain_requested, memory_order_relaxed);
}

/* Takes the cached block that serves size out of the cache, or returns NULL. may_sync: if the
 * oldest block of a full queue is pending, one synchronization (when cheap) makes the whole queue
 * reusable; without it (the express path) a pending block is a miss, left for the full path. */
static inline gs_pool_block_t *cache_take(gs_pool_device_t *p, thread_cache_t *c, int device,
                                          uint64_t size, bool may_sync)
{
    /* The latest freed block first: a loop that frees and allocates one size finds it there. */
    gs_pool_block_t *b = c->last;
    if (b && fits(b, size) && reusable(p, b)) {
        c->last = NULL;
        OWNER_ADD(c->slot_bytes, -b->size);
        OWNER_ADD(c->hits, 1);
        return b;
    }
    b = NULL;
    if (size <= CACHE_BYTES) {
        int first = class_floor(size);
        cache_queue_t *r = NULL;
        for (int k = first; k <= first + 1 && k < CACHE_CLASSES && b == NULL; k++) {
            r = &c->queues[k];
            if (r->head && fits(r->head, size))
                b = r->head;
        }
        if (b && (reusable(p, b) ||
                  (may_sync &&
                   (r->count == CACHE_DEPTH ||
                    atomic_load_explicit(&c->small_bytes, memory_order_relaxed) + size >
                        p->cache_budget) &&
                   gs_pool_sync_if_cheap(p, device) && reusable(p, b)))) {
            r->head = b->next_free;
            if (r->head == NULL)
                r->tail = NULL;
            r->count--;
            OWNER_ADD(c->small_bytes, -b->size);
            OWNER_ADD(c->hits, 1);
            return b;
        }
    }
    /* The one block beyond the budget (see cache_put). */
    b = c->large;
    if (b == NULL || !fits(b, size) || !reusable(p, b))
        return NULL; /* a pending one takes the central path's synchronization rules */
    c->large = NULL;
    OWNER_ADD(c->slot_bytes, -b->size);
    OWNER_ADD(c->hits, 1);
    return b;
}

/* The full path's look in the cache (owner only): counts the misses too. */
static gs_pool_block_t *cache_lookup(gs_pool_device_t *p, thread_cache_t *c, int device,
                                     uint64_t size)
{
    if (__builtin_expect(!cache_usable(p, c), 0)) {
        discard_stale(p, c);
        if (atomic_load_explicit(&c->drain_requested, memory_order_relaxed)) {
            atomic_store(&c->drain_requested, false);
            pthread_mutex_lock(&p->lock);
            cache_drain(p, c);
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
    }
    gs_pool_block_t *b = cache_take(p, c, device, size, true);
    if (b == NULL)
        OWNER_ADD(c->misses, 1);
    return b;
}

/* Files a freed block in a queue or as the large one. Returns what goes to the central pool
 * instead: NULL, the block itself (its queue or the budget is full), or the larger block it
 * replaced. */
static gs_pool_block_t *cache_file(const gs_pool_device_t *p, thread_cache_t *c, gs_pool_block_t *b)
{
    /* A block reusable at once (immediate reuse, or a free while no GPU work was in flight)
     * needs no synchronization amortized: the smaller budget. */
    uint64_t budget = reusable(p, b) ? CACHE_BYTES_IMMEDIATE : p->cache_budget;
    if (b->size > CACHE_BYTES || b->size > budget) {
        /* One larger block beside the budget, the latest freed, so a loop that allocates one big
         * buffer again and again never reaches the central pool. */
        gs_pool_block_t *old = c->large;
        c->large = b;
        OWNER_ADD(c->slot_bytes, b->size - (old ? old->size : 0));
        return old;
    }
    cache_queue_t *r = &c->queues[b->size_class];
    if (r->count == CACHE_DEPTH ||
        atomic_load_explicit(&c->small_bytes, memory_order_relaxed) + b->size > budget)
        return b;
    b->next_free = NULL;
    if (r->tail)
        r->tail->next_free = b;
    else
        r->head = b;
    r->tail = b;
    r->count++;
    OWNER_ADD(c->small_bytes, b->size);
    return NULL;
}

/* Keeps a freed block in the thread's cache: as the latest freed, filing the one it replaces.
 * Returns what goes to the central pool instead (see cache_file). */
static inline gs_pool_block_t *cache_put(const gs_pool_device_t *p, thread_cache_t *c,
                                         gs_pool_block_t *b)
{
    discard_stale(p, c);
    gs_pool_block_t *old = c->last;
    c->last = b;
    OWNER_ADD(c->slot_bytes, b->size - (old ? old->size : 0));
    return old ? cache_file(p, c, old) : NULL;
}

/* Under memory pressure (device lock held): our own cache goes back to the central pool now;
 * other threads are asked to drain theirs at their next allocation. What they hold meanwhile is
 * bounded by the cache budget and two more blocks each (the latest freed, one large). */
void gs_pool_drain_caches(gs_pool_device_t *p, int device)
{
    for (thread_cache_t *c = atomic_load(&gs_caches); c; c = c->next)
        if (c->device == device && c != gs_my_caches[device])
            atomic_store_explicit(&c->drain_requested, true, memory_order_relaxed);
    if (gs_my_caches[device])
        cache_drain(p, gs_my_caches[device]);
}

/* ---- per-device set-up ------------------------------------------------------------------ */

static pthread_once_t gs_pool_once = PTHREAD_ONCE_INIT;

static void make_cache_key(void)
{
    pthread_key_create(&gs_cache_key, cache_orphan);
}

static void pool_start(void)
{
    pthread_once(&gs_pool_once, make_cache_key);
}

static gs_pool_device_t *pool_for(int device)
{
    gs_pool_device_t *p = &gs_pools[device];
    if (__builtin_expect(!atomic_load_explicit(&p->ready, memory_order_acquire), 0)) {
        pool_start();
        pthread_mutex_lock(&p->lock);
        if (!atomic_load_explicit(&p->ready, memory_order_relaxed))
            gs_pool_device_init(p, device);
        pthread_mutex_unlock(&p->lock);
    }
    return p;
}

/* ---- the backend operations ------------------------------------------------------------- */

/* A buffer ID for each allocation, as the driver gives one to each cuMemAlloc: libraries key
 * registration and IPC caches by it, and a block reused at the same address is a new buffer.
 * The top bit keeps them apart from the driver's own (small counters); then the thread cache's
 * index and its count, so no two allocations share one and no shared counter is touched. */
static uint64_t buffer_id(thread_cache_t *c)
{
    static _Atomic uint64_t uncached; /* a thread without a cache (out of host memory) */
    if (c == NULL)
        return 1ull << 63 | (atomic_fetch_add(&uncached, 1) & ((1ull << 40) - 1));
    return c->id_base | (++c->allocations & ((1ull << 40) - 1));
}

/* This thread allocates or frees b: whether it was the last to (gs_block_t.same_thread). */
static inline bool touch(gs_pool_block_t *b)
{
    bool same = b->last_thread == gs_recent;
    b->last_thread = gs_recent;
    return same;
}

/* Hands b out for requested bytes (owner of its cache, or of the pool's lock): its record, and
 * this thread's memory of it for the free. Returns its address. */
static inline CUdeviceptr hand_out(thread_cache_t *c, gs_pool_block_t *b, uint64_t requested)
{
    b->requested = requested;
    b->buffer_id = buffer_id(c);
    atomic_store_explicit(&b->state, BLOCK_LIVE, memory_order_release); /* from CACHED */
    remember(b);
    return b->base;
}

/* What the pool serves: device allocations; in managed mode also stream-ordered ones and the
 * program's managed ones of global attach (others keep their own semantics: host attach, explicit
 * memory pools). */
static bool pooled(const gs_alloc_req_t *req)
{
    switch (req->kind) {
    case GS_KIND_DEVICE:
    case GS_KIND_PITCH:
        return true;
    case GS_KIND_ASYNC:
        return req->mem_pool == NULL && gs_opts.mode == GS_MODE_MANAGED;
    case GS_KIND_MANAGED:
        return req->managed_flags == CU_MEM_ATTACH_GLOBAL && gs_opts.mode == GS_MODE_MANAGED;
    }
    return false;
}

/* Larger than any device or host: out of memory, as the driver says, before any size arithmetic
 * can wrap. */
#define GS_POOL_LARGEST (1ull << 62)

static CUresult pool_alloc(const gs_alloc_req_t *req, CUdeviceptr *ptr, size_t *pitch,
                           gs_block_t *block)
{
    if (!pooled(req))
        return gs_backend_passthrough.alloc(req, ptr, pitch, block);
    gs_pool_device_t *p = pool_for(req->device);
    uint64_t requested = req->bytes;
    CUresult layout;
    if (req->kind == GS_KIND_PITCH &&
        (layout = gs_pitch_layout(req, p->pitch_align, pitch, &requested)) != CUDA_SUCCESS)
        return layout; /* at the device's pitch alignment */
    if (requested == 0)
        return CUDA_ERROR_INVALID_VALUE; /* as cuMemAlloc(0) */
    if (requested > GS_POOL_LARGEST)
        return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t size = round_up(requested, GS_POOL_ALIGN);
    thread_cache_t *cache = my_cache(req->device);
    gs_pool_block_t *b = cache ? cache_lookup(p, cache, req->device, size) : NULL;
    if (b == NULL) {
        CUresult rc = gs_pool_central_alloc(p, req->device, size, &b);
        if (rc != CUDA_SUCCESS)
            return rc;
        b->size_class = class_floor(b->size); /* a block from the pool: its size may be new */
    }
    *ptr = hand_out(cache, b, requested);
    *block = (gs_block_t){.base = b->base,
                          .bytes = requested,
                          .device = req->device,
                          .kind = req->kind,
                          .owner = b,
                          .same_thread = touch(b)};
    return CUDA_SUCCESS;
}

/* Claims the live block at ptr for freeing (LIVE -> CACHED). */
static inline bool claim(gs_pool_block_t *b, CUdeviceptr ptr)
{
    int live = BLOCK_LIVE;
    return __atomic_load_n(&b->base, __ATOMIC_RELAXED) == ptr &&
           atomic_compare_exchange_strong(&b->state, &live, BLOCK_CACHED);
}

/* Keeps a claimed block: stamped for safe reuse, into this thread's cache or the central pool. */
static inline void keep(gs_pool_device_t *p, thread_cache_t *cache, gs_pool_block_t *b)
{
    /* Stamp before publishing: a synchronization that starts after this covers the free; or, if
     * no GPU work was issued since the last mark or synchronization, that one does. */
    bool quiet;
    b->epoch = gs_pool_free_epoch(p, b->device, &quiet);
    if (quiet && cache)
        OWNER_ADD(cache->quiet_frees, 1);
    gs_pool_block_t *central = cache ? cache_put(p, cache, b) : b;
    if (central == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    gs_pool_release(p, central);
    pthread_mutex_unlock(&p->lock);
}

static int pool_free(CUdeviceptr ptr, const gs_free_req_t *req, CUresult *result, gs_block_t *block)
{
    gs_pool_block_t *b = recall(ptr);
    if (b == NULL || !claim(b, ptr)) {
        gs_block_t entry;
        if (gs_ptrmap_find(ptr, &entry) != 0)
            return GS_NOT_OURS;
        b = entry.owner;
        if (b == NULL) /* a stream-ordered or managed allocation we passed through */
            return gs_backend_passthrough.free(ptr, req, result, block);
        if (!claim(b, ptr)) {
            *result = CUDA_ERROR_INVALID_VALUE; /* double free: what the driver says */
            block->base = 0;
            return 0;
        }
    }
    *block = (gs_block_t){.base = b->base,
                          .bytes = b->requested,
                          .device = b->device,
                          .kind = GS_KIND_DEVICE,
                          .owner = b,
                          .same_thread = touch(b)};
    *result = CUDA_SUCCESS;
    keep(&gs_pools[b->device], my_cache(b->device), b);
    (void)req; /* a stream-ordered free of a pool block: the same epoch rule covers it */
    return 0;
}

/* ---- the express path ------------------------------------------------------------------- */

/* The commonest calls, cuMemAlloc and cuMemFree on device 0 of a one-device process
 * (gs_backend_t.express_mem_alloc says when the core takes it), served by this thread's cache in
 * one function and about 60% of the full path's instructions (the shim's time follows its
 * instruction count on the CPU machine, and in part on the GPU machines: README, Limits).
 * Whatever it cannot serve without waiting for the GPU or asking the driver, it hands untouched
 * to the full path; a freed block that does not fit in the cache goes to the central pool under
 * its lock, as on the full path. */
static inline bool express_alloc(CUdeviceptr *dptr, size_t bytes)
{
    gs_pool_device_t *p = &gs_pools[0];
    thread_cache_t *c = gs_my_caches[0];
    if (__builtin_expect(c == NULL || bytes == 0 || !cache_usable(p, c), 0))
        return false;
    gs_pool_block_t *b = cache_take(p, c, 0, round_up(bytes, GS_POOL_ALIGN), false);
    if (b == NULL)
        return false;
    *dptr = hand_out(c, b, bytes);
    gs_express_allocated(*dptr, bytes, touch(b));
    return true;
}

static inline bool express_free(CUdeviceptr ptr)
{
    gs_pool_block_t *b = recall(ptr); /* forgotten: a declined call looks in the map */
    thread_cache_t *c = gs_my_caches[0];
    if (__builtin_expect(b == NULL || b->device != 0 || c == NULL, 0) || !claim(b, ptr))
        return false;
    /* Counted and traced before keep, which may hand the block to other threads, and so that
     * nothing is left to do after keep's rare call into the central pool. */
    gs_express_freed(ptr, b->requested, touch(b));
    keep(&gs_pools[0], c, b);
    return true;
}

/* The timed calls (one in 32) apart, so that the untimed ones keep no clock reading. */
static __attribute__((noinline)) CUresult express_alloc_timed(CUdeviceptr *dptr, size_t bytes)
{
    uint64_t start = gs_timing_start();
    if (!express_alloc(dptr, bytes)) {
        gs_timing_declined(start);
        return gs_mem_alloc_full(dptr, bytes);
    }
    gs_timing_end(start);
    return CUDA_SUCCESS;
}

static __attribute__((noinline)) CUresult express_free_timed(CUdeviceptr ptr)
{
    uint64_t start = gs_timing_start();
    if (!express_free(ptr)) {
        gs_timing_declined(start);
        return gs_mem_free_full(ptr);
    }
    gs_timing_end(start);
    return CUDA_SUCCESS;
}

static CUresult pool_express_mem_alloc(CUdeviceptr *dptr, size_t bytes)
{
    if (gs_timing_due())
        return express_alloc_timed(dptr, bytes);
    if (__builtin_expect(!express_alloc(dptr, bytes), 0)) {
        gs_timing_declined(0);
        return gs_mem_alloc_full(dptr, bytes);
    }
    return CUDA_SUCCESS;
}

static CUresult pool_express_mem_free(CUdeviceptr ptr)
{
    if (gs_timing_due())
        return express_free_timed(ptr);
    if (__builtin_expect(!express_free(ptr), 0)) {
        gs_timing_declined(0);
        return gs_mem_free_full(ptr);
    }
    return CUDA_SUCCESS;
}

/* The live pool block containing ptr (interior pointers too), or NULL. */
static gs_pool_block_t *containing(CUdeviceptr ptr)
{
    gs_block_t entry;
    if (gs_ptrmap_find(ptr, &entry) == 0) {
        if (entry.owner == NULL)
            return NULL; /* passed through: the driver describes it */
        gs_pool_block_t *b = entry.owner;
        return atomic_load(&b->state) == BLOCK_LIVE ? b : NULL;
    }
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        gs_pool_device_t *p = &gs_pools[d];
        if (!atomic_load(&p->ready))
            continue;
        gs_pool_block_t *found = NULL;
        pthread_mutex_lock(&p->lock);
        for (gs_pool_chunk_t *c = p->chunks; c && !found; c = c->next) {
            if (ptr < c->base || ptr >= c->base + c->size)
                continue;
            for (gs_pool_block_t *b = c->first; b; b = b->next_addr)
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
    gs_pool_block_t *b = containing(ptr);
    if (b == NULL || ptr >= b->base + b->requested)
        return GS_NOT_OURS;
    if (base)
        *base = b->base;
    if (size)
        *size = b->requested;
    *result = CUDA_SUCCESS;
    return 0;
}

/* The attributes that describe an allocation answer for the block, not the chunk: its range and
 * mapping, its own buffer ID, and (for a block inside a chunk, whose IPC handle the shim refuses)
 * that legacy CUDA IPC cannot share it. Every other attribute is the chunk's, which is right. */
static int pool_pointer_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr,
                                  CUresult *result)
{
    if (attr != CU_POINTER_ATTRIBUTE_RANGE_START_ADDR && attr != CU_POINTER_ATTRIBUTE_RANGE_SIZE &&
        attr != CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR &&
        attr != CU_POINTER_ATTRIBUTE_MAPPING_SIZE && attr != CU_POINTER_ATTRIBUTE_BUFFER_ID &&
        attr != CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE)
        return GS_NOT_OURS;
    gs_pool_block_t *b = containing(ptr);
    if (b == NULL)
        return GS_NOT_OURS;
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
        *(CUdeviceptr *)data = b->base;
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE:
        *(size_t *)data = b->requested;
        break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
        *(unsigned long long *)data = b->buffer_id;
        break;
    default: /* IS_LEGACY_CUDA_IPC_CAPABLE */
        if (whole_chunk(b))
            return GS_NOT_OURS;
        *(int *)data = 0;
        break;
    }
    *result = CUDA_SUCCESS;
    return 0;
}

/* Differs from CUDA on purpose: the driver would hand out the handle of the whole chunk for a
 * block inside it, and the importer would read the wrong memory. */
static int pool_ipc_handle(CUipcMemHandle *handle, CUdeviceptr ptr, CUresult *result)
{
    (void)handle;
    gs_pool_block_t *b = containing(ptr);
    if (b && b->chunk->managed) {
        gs_log_warning("cuIpcGetMemHandle failed (error %d): CUDA IPC cannot share managed memory, "
                       "and %s; run the exporting process with GPUSHIM_MODE=off or pool",
                       (int)CUDA_ERROR_INVALID_VALUE,
                       gs_opts.mode == GS_MODE_MANAGED
                           ? "GPUSHIM_MODE=managed makes every allocation managed"
                           : "this allocation was spilled to managed memory (GPUSHIM_ON_OOM)");
        *result = CUDA_ERROR_INVALID_VALUE; /* the driver's answer for managed memory */
        return 0;
    }
    if (b == NULL || whole_chunk(b))
        return GS_NOT_OURS; /* not ours, or a whole chunk: the driver's handle is right */
    gs_log_warning("cuIpcGetMemHandle refused (CUDA_ERROR_INVALID_VALUE): %#llx is a block inside "
                   "%s; run this program with GPUSHIM_MODE=off to share memory by IPC",
                   (unsigned long long)ptr,
                   b->chunk->expandable ? "the pool's mapped range, which legacy IPC cannot share"
                                        : "a pool chunk, and its handle would map the whole chunk");
    *result = CUDA_ERROR_INVALID_VALUE;
    return 0;
}

static uint64_t cached_bytes(int device)
{
    uint64_t bytes = 0, generation = atomic_load(&gs_pools[device].generation);
    for (thread_cache_t *c = atomic_load(&gs_caches); c; c = c->next)
        if (c->device == device && atomic_load(&c->generation) == generation)
            bytes += atomic_load_explicit(&c->small_bytes, memory_order_relaxed) +
                     atomic_load_explicit(&c->slot_bytes, memory_order_relaxed);
    return bytes;
}

/* Bytes the pool holds on the device that the program could still get. */
static uint64_t pool_idle_bytes(int device)
{
    gs_pool_device_t *p = &gs_pools[device];
    if (!atomic_load(&p->ready))
        return 0;
    pthread_mutex_lock(&p->lock);
    uint64_t idle = p->free_bytes + p->pending_bytes;
    pthread_mutex_unlock(&p->lock);
    return idle + cached_bytes(device);
}

/* What the program can still get: the driver's free memory plus every pool byte not in use. In
 * managed mode with a cap (GPUSHIM_MANAGED_LIMIT), frameworks that size themselves from free
 * memory see what the shim will give: total = the cap, free = the cap less what is in use. */
static int pool_mem_get_info(size_t *free_bytes, size_t *total_bytes, CUresult *result)
{
    const gs_driver_t *drv = gs_driver();
    int device = gs_current_device();
    gs_pool_device_t *p = pool_for(device);
    *result =
        drv->mem_get_info ? drv->mem_get_info(free_bytes, total_bytes) : CUDA_ERROR_NOT_SUPPORTED;
    if (*result != CUDA_SUCCESS)
        return 0;
    uint64_t idle = pool_idle_bytes(device);
    if (p->managed && p->max != UINT64_MAX) {
        pthread_mutex_lock(&p->lock);
        uint64_t reserved = p->reserved;
        pthread_mutex_unlock(&p->lock);
        uint64_t in_use = reserved > idle ? reserved - idle : 0;
        *total_bytes = p->max;
        *free_bytes = in_use < p->max ? p->max - in_use : 0;
        return 0;
    }
    *free_bytes += idle;
    if (*free_bytes > *total_bytes)
        *free_bytes = *total_bytes;
    return 0;
}

static void pool_report(int device, gs_buf_t *out, bool json)
{
    gs_pool_device_t *p = &gs_pools[device];
    if (!atomic_load(&p->ready))
        return;
    uint64_t hits = 0, misses = 0, quiet_frees = 0;
    for (thread_cache_t *c = atomic_load(&gs_caches); c; c = c->next)
        if (c->device == device) {
            hits += atomic_load_explicit(&c->hits, memory_order_relaxed);
            misses += atomic_load_explicit(&c->misses, memory_order_relaxed);
            quiet_frees += atomic_load_explicit(&c->quiet_frees, memory_order_relaxed);
        }
    const char *idle_off = gs_opts.pool_idle_reuse == GS_IDLE_REUSE_OFF
                               ? "GPUSHIM_POOL_IDLE_REUSE=off"
                               : gs_work_blind_reason();
    gs_device_stats_t s;
    gs_stats_snapshot(device, &s);
    uint64_t served = hits + misses, cached = cached_bytes(device);
    /* Under the lock: at exit other threads may still allocate and grow the pool. */
    pthread_mutex_lock(&p->lock);
    const char *vmm_off = p->vmm.off;
    double ratio = s.peak > 0 ? (double)p->reserved_peak / (double)s.peak : 0.0;
    uint64_t largest = 0;
    for (int h = 0; h < HEAPS; h++) {
        uint64_t in_heap = 0;
        for (int c = CLASS_COUNT - 1; c >= 0 && in_heap == 0; c--)
            for (gs_pool_block_t *b = p->heaps[h].free_lists[c]; b; b = b->next_free)
                if (b->size > in_heap)
                    in_heap = b->size;
        if (in_heap > largest)
            largest = in_heap;
    }
    const char *reuse = gs_opts.pool_reuse == GS_REUSE_SAFE ? "safe" : "immediate";
    uint64_t syncs = atomic_load(&p->shim_syncs);
    double sync_mean_us = syncs ? (double)atomic_load(&p->shim_sync_ns) / (double)syncs / 1e3 : 0;
    const char *events_off = gs_pool_events_off_reason(p);
    double mark_wait_mean_us =
        p->mark_waits ? (double)p->mark_wait_ns / (double)p->mark_waits / 1e3 : 0;
    if (json) {
        gs_buf_printf(
            out,
            ",\n      \"pool\": {\"reserved\": %llu, \"reserved_peak\": %llu, "
            "\"chunks\": %llu, \"driver_allocations\": %llu, \"chunks_given_back\": %llu, "
            "\"peak_reserved_over_peak_in_use\": %.4f, \"cache_hits\": %llu, "
            "\"pool_allocations\": %llu, \"reuse\": \"%s\", \"pending\": %llu, "
            "\"shim_synchronizations\": %llu, \"shim_synchronization_mean_us\": %.1f, "
            "\"cached_in_threads\": %llu, "
            "\"largest_free_block\": %llu, \"event_recycles\": %llu, \"events\": \"%s%s\", "
            "\"mark_waits\": %llu, \"mark_waits_given_up\": %llu, \"mark_wait_mean_us\": %.1f, "
            "\"idle_reuse\": \"%s%s\", \"idle_frees\": %llu, \"work_functions_watched\": %u, "
            "\"expandable\": \"%s%s\", \"expandable_mapped\": %llu, \"expandable_pieces\": %u}",
            (unsigned long long)p->reserved, (unsigned long long)p->reserved_peak,
            (unsigned long long)p->chunk_count, (unsigned long long)p->grow_calls,
            (unsigned long long)p->releases, ratio, (unsigned long long)hits,
            (unsigned long long)served, reuse, (unsigned long long)p->pending_bytes,
            (unsigned long long)syncs, sync_mean_us, (unsigned long long)cached,
            (unsigned long long)largest, (unsigned long long)p->event_recycles,
            events_off ? "off: " : "on", events_off ? events_off : "",
            (unsigned long long)p->mark_waits, (unsigned long long)p->mark_waits_given_up,
            mark_wait_mean_us, idle_off ? "off: " : "on", idle_off ? idle_off : "",
            (unsigned long long)quiet_frees, gs_work_wrapper_count(), vmm_off ? "off: " : "on",
            vmm_off ? vmm_off : "", (unsigned long long)p->vmm.mapped, p->vmm.count);
    } else {
        char reserved[32], peak[32], pending[32], large[32], cached_text[32];
        gs_buf_printf(
            out,
            "gpushim: device %d: pool reserved %s now, peak %s, in %llu chunks; %llu "
            "driver allocations, %llu chunks given back; peak reserved / peak in use %.3f\n",
            device, gs_format_bytes(p->reserved, reserved), gs_format_bytes(p->reserved_peak, peak),
            (unsigned long long)p->chunk_count, (unsigned long long)p->grow_calls,
            (unsigned long long)p->releases, ratio);
        char mapped[32];
        gs_buf_printf(out,
                      "gpushim: device %d: pool growth in place (blocks of 256 KiB and more): "
                      "%s%s; %s mapped in %u piece%s at the end of one virtual range\n",
                      device, vmm_off ? "off, " : "on", vmm_off ? vmm_off : "",
                      gs_format_bytes(p->vmm.mapped, mapped), p->vmm.count,
                      p->vmm.count == 1 ? "" : "s");
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
        if (gs_opts.pool_reuse == GS_REUSE_SAFE) {
            gs_buf_printf(out,
                          "gpushim: device %d: pool reuse by events: %s%s; %llu "
                          "events made pending blocks reusable without a wait; the pool waited "
                          "for the GPU to pass a mark instead of growing %llu times (%.1f us "
                          "each; %llu gave up after 2 ms)\n",
                          device, events_off ? "off, " : "on", events_off ? events_off : "",
                          (unsigned long long)p->event_recycles, (unsigned long long)p->mark_waits,
                          mark_wait_mean_us, (unsigned long long)p->mark_waits_given_up);
            gs_buf_printf(out,
                          "gpushim: device %d: pool reuse while no GPU work was in flight: %s%s; "
                          "%llu frees were reusable at once (%u work-issuing driver functions "
                          "watched)\n",
                          device, idle_off ? "off, " : "on", idle_off ? idle_off : "",
                          (unsigned long long)quiet_frees, gs_work_wrapper_count());
        }
    }
    gs_pool_managed_report(p, device, out, json); /* managed chunks, what spilled */
    pthread_mutex_unlock(&p->lock);
}

/* cudaDeviceReset: the driver freed every chunk (gs_ptrmap no longer lists their blocks). The
 * pool starts again from nothing; thread caches drop their records at their next use. */
static void pool_device_reset(int device)
{
    gs_pool_device_t *p = &gs_pools[device];
    if (atomic_load(&p->ready)) {
        pthread_mutex_lock(&p->lock);
        gs_pool_forget_chunks(p);
        pthread_mutex_unlock(&p->lock);
        gs_pool_forget_streams(device);
    }
}

/* cuCtxDestroy: if all of a device's chunks came from the destroyed context, the core forgets
 * the device; if only some did, the pool cannot drop those alone (their blocks may sit in any
 * thread's cache), so it says so once and keeps them: use GPUSHIM_MODE=off for such programs. */
static int pool_context_destroyed(CUcontext ctx)
{
    static atomic_bool warned;
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        gs_pool_device_t *p = &gs_pools[d];
        if (!atomic_load(&p->ready))
            continue;
        pthread_mutex_lock(&p->lock);
        int mine = gs_pool_chunks_of_context(p, ctx);
        pthread_mutex_unlock(&p->lock);
        if (mine == 1)
            return d;
        if (mine < 0 && !atomic_exchange(&warned, true))
            gs_log_warning("cuCtxDestroy freed pool memory on device %d that shares the pool with "
                           "another context; the pool cannot tell it apart and may hand it out "
                           "again: run programs that destroy one of several contexts with "
                           "GPUSHIM_MODE=off",
                           d);
    }
    return -1;
}

/* Entries of the map that are not pool blocks (passed through, spilled) are live while they are
 * in the map; a pool block is live while handed out, with the size the program asked for. */
static uint64_t pool_live_bytes(const gs_block_t *block)
{
    if (block->owner == NULL)
        return block->bytes;
    gs_pool_block_t *b = block->owner;
    return atomic_load(&b->state) == BLOCK_LIVE ? b->requested : 0;
}

/* Fork child: the parent's device memory is not ours to use. Host records are dropped (leaked:
 * freeing them safely would need locks another thread may have held at the fork). */
static void pool_forget(void)
{
    gs_work_forget();
    memset(gs_pools, 0, sizeof gs_pools);
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        pthread_mutex_init(&gs_pools[d].lock, NULL);
        pthread_mutex_init(&gs_pools[d].departed_lock, NULL);
    }
    atomic_store(&gs_caches, NULL);
    pthread_mutex_init(&gs_caches_lock, NULL);
    memset(gs_my_caches, 0, sizeof gs_my_caches);
    memset(gs_recent, 0, sizeof gs_recent);
    gs_latest.base = 0;
    gs_ptrmap_clear();
}

/* Tests: frees every host record (single-threaded; device memory is the fake's business). */
void gs_pool_destroy(void)
{
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        free(gs_pools[d].vmm.pieces);
        for (gs_pool_chunk_t *c = gs_pools[d].chunks, *next; c; c = next) {
            next = c->next;
            for (gs_pool_block_t *b = c->first, *after; b; b = after) {
                after = b->next_addr;
                free(b);
            }
            free(c);
        }
        for (gs_pool_block_t *b = gs_pools[d].spare, *after; b; b = after) {
            after = b->next_free;
            free(b);
        }
        for (int i = 0; i < MARKS; i++)
            if (gs_pools[d].marks[i].event && gs_driver()->event_destroy)
                gs_driver()->event_destroy(gs_pools[d].marks[i].event);
        gs_pool_drop_departed(&gs_pools[d], true);
    }
    for (thread_cache_t *c = atomic_load(&gs_caches), *next; c; c = next) {
        next = c->next;
        free(c);
    }
    pool_forget();
}

#define GS_POOL_OPERATIONS                                                                         \
    .start = pool_start, .alloc = pool_alloc, .free = pool_free,                                   \
    .express_mem_alloc = pool_express_mem_alloc, .express_mem_free = pool_express_mem_free,        \
    .mem_get_info = pool_mem_get_info, .idle_bytes = pool_idle_bytes,                              \
    .address_range = pool_address_range, .pointer_attribute = pool_pointer_attribute,              \
    .ipc_handle = pool_ipc_handle, .before_sync = gs_pool_before_sync,                             \
    .after_sync = gs_pool_after_sync, .report = pool_report, .device_reset = pool_device_reset,   \
    .context_destroyed = pool_context_destroyed, .stream_destroying = gs_pool_stream_destroying,   \
    .live_bytes = pool_live_bytes, .forget = pool_forget

const gs_backend_t gs_backend_pool = {.name = "pool", GS_POOL_OPERATIONS};
/* The same pool; gs_pool_device_init reads the mode and takes managed chunks. */
const gs_backend_t gs_backend_managed = {.name = "managed", GS_POOL_OPERATIONS};
