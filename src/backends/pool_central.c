/* pool_central.c: the pool behind the thread caches, per device and behind its lock: good-fit
 * segregated free lists over address-ordered blocks that coalesce, the pending list and the
 * synchronizations of safe reuse, and growth from and release to the driver. pool.c holds the
 * thread caches and the backend operations; pool_internal.h the types they share. */
#include "gs.h"
#include "pool_internal.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

gs_pool_device_t gs_pools[GS_MAX_DEVICES];
uint64_t gs_pool_cheap_sync_ns = 50000;

/* ---- central free lists (device lock held) ---------------------------------------------- */

static void list_push(gs_pool_device_t *p, gs_pool_block_t *b)
{
    gs_pool_heap_t *h = &p->heaps[b->chunk->heap];
    int c = class_floor(b->size);
    b->prev_free = NULL;
    b->next_free = h->free_lists[c];
    if (b->next_free)
        b->next_free->prev_free = b;
    h->free_lists[c] = b;
    h->bitmap[c / 64] |= 1ull << (c % 64);
    p->free_bytes += b->size;
    atomic_store_explicit(&b->state, BLOCK_FREE, memory_order_relaxed);
}

static void list_remove(gs_pool_device_t *p, gs_pool_block_t *b)
{
    gs_pool_heap_t *h = &p->heaps[b->chunk->heap];
    int c = class_floor(b->size);
    if (b->prev_free)
        b->prev_free->next_free = b->next_free;
    else
        h->free_lists[c] = b->next_free;
    if (b->next_free)
        b->next_free->prev_free = b->prev_free;
    if (h->free_lists[c] == NULL)
        h->bitmap[c / 64] &= ~(1ull << (c % 64));
    p->free_bytes -= b->size;
}

/* The smallest block of a list that holds size (lowest address among equals), or NULL. */
static gs_pool_block_t *best_in(gs_pool_block_t *list, uint64_t size)
{
    gs_pool_block_t *best = NULL;
    for (gs_pool_block_t *b = list; b; b = b->next_free)
        if (b->size >= size && (best == NULL || b->size < best->size ||
                                (b->size == best->size && b->base < best->base)))
            best = b;
    return best;
}

/* Best fit in one heap: the size's own class first (a block there may fit), then the first
 * non-empty class where every block fits, and the smallest block in it. */
static gs_pool_block_t *find_in(const gs_pool_heap_t *h, uint64_t size)
{
    gs_pool_block_t *b = best_in(h->free_lists[class_floor(size)], size);
    if (b)
        return b;
    for (int c = class_ceil(size); c < CLASS_COUNT;) {
        uint64_t word = h->bitmap[c / 64] & (~0ull << (c % 64));
        if (word)
            return best_in(h->free_lists[(c / 64) * 64 + __builtin_ctzll(word)], size);
        c = (c / 64 + 1) * 64;
    }
    return NULL;
}

static inline int heap_for(uint64_t size)
{
    return size < SMALL_BLOCK ? HEAP_SMALL : HEAP_LARGE;
}

static gs_pool_block_t *find_free(gs_pool_device_t *p, uint64_t size)
{
    return find_in(&p->heaps[heap_for(size)], size);
}

/* Memory is short: a block from either heap will do. */
static gs_pool_block_t *find_anywhere(gs_pool_device_t *p, uint64_t size)
{
    gs_pool_block_t *b = find_free(p, size);
    return b ? b : find_in(&p->heaps[!heap_for(size)], size);
}

static int map_block(gs_pool_block_t *b)
{
    gs_block_t entry = {
        .base = b->base, .bytes = b->size, .device = b->device, .kind = GS_KIND_DEVICE, .owner = b};
    return gs_ptrmap_insert(&entry);
}

static void recycle_block(gs_pool_device_t *p, gs_pool_block_t *b)
{
    __atomic_store_n(&b->base, 0, __ATOMIC_RELAXED);
    atomic_fetch_add_explicit(&b->generation, 1, memory_order_release);
    b->next_free = p->spare;
    p->spare = b;
}

static gs_pool_block_t *new_block(gs_pool_device_t *p, gs_pool_chunk_t *chunk, CUdeviceptr base,
                                  uint64_t size, int device)
{
    gs_pool_block_t *b = p->spare;
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
    b->last_thread = NULL;
    atomic_store_explicit(&b->state, BLOCK_FREE, memory_order_relaxed);
    __atomic_store_n(&b->base, base, __ATOMIC_RELAXED);
    if (map_block(b) != 0) {
        recycle_block(p, b);
        return NULL;
    }
    return b;
}

/* Takes size bytes from the front of free block b; the rest stays free. */
static void carve(gs_pool_device_t *p, gs_pool_block_t *b, uint64_t size)
{
    list_remove(p, b);
    /* LIVE before the lock is dropped, or a neighbour's free could merge it as FREE. */
    atomic_store_explicit(&b->state, BLOCK_LIVE, memory_order_relaxed);
    if (b->size - size >= GS_POOL_ALIGN) {
        gs_pool_block_t *rest = new_block(p, b->chunk, b->base + size, b->size - size, b->device);
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

static void merge_into_prev(gs_pool_device_t *p, gs_pool_block_t *prev, gs_pool_block_t *b)
{
    prev->size += b->size;
    prev->next_addr = b->next_addr;
    if (b->next_addr)
        b->next_addr->prev_addr = prev;
    gs_ptrmap_remove(b->base, NULL);
    recycle_block(p, b);
}

/* Returns a block to the central free lists, coalescing with free neighbours. */
static void central_free(gs_pool_device_t *p, gs_pool_block_t *b)
{
    gs_pool_block_t *next = b->next_addr, *prev = b->prev_addr;
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

/* Pending blocks whose free a completed synchronization covers go back to the free lists. */
static void recycle_pending(gs_pool_device_t *p)
{
    p->recycled_upto = atomic_load_explicit(&p->completed, memory_order_acquire);
    gs_pool_block_t **link = &p->pending;
    while (*link) {
        gs_pool_block_t *b = *link;
        if (reusable(p, b)) {
            *link = b->next_free;
            p->pending_bytes -= b->size;
            central_free(p, b);
        } else {
            link = &b->next_free;
        }
    }
}

uint64_t gs_pool_before_sync(int device)
{
    /* Frees stamped with the old epoch happened before this synchronization started. */
    uint64_t token = atomic_fetch_add(&gs_pools[device].epoch, 1);
    if (gs_opts.pool_reuse == GS_REUSE_SAFE && gs_opts.pool_idle_reuse == GS_IDLE_REUSE_AUTO)
        gs_work_quiet_from(device, token); /* before the caller records or synchronizes */
    return token;
}

/* No GPU work was issued since the latest mark or synchronization: it covers all there is. */
static bool quiet_now(gs_pool_device_t *p, int device)
{
    bool quiet;
    return gs_pool_free_epoch(p, device, &quiet), quiet;
}

/* A synchronization or event covering every free stamped up to token has completed. */
static void mark_completed(gs_pool_device_t *p, uint64_t token)
{
    uint64_t done = atomic_load_explicit(&p->completed, memory_order_relaxed);
    while (token > done &&
           !atomic_compare_exchange_weak_explicit(&p->completed, &done, token, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
    }
}

static int release_free_chunks(gs_pool_device_t *p, int device, uint64_t keep);

/* After the program's own device synchronization: pending blocks it covers are free again, and
 * with GPUSHIM_POOL_RELEASE_THRESHOLD wholly free chunks beyond it go back to the driver (the
 * device is idle now, so cuMemFree waits for nothing). */
void gs_pool_after_sync(int device, uint64_t token)
{
    gs_pool_device_t *p = &gs_pools[device];
    mark_completed(p, token);
    if (atomic_load_explicit(&p->ready, memory_order_acquire)) {
        pthread_mutex_lock(&p->lock);
        recycle_pending(p);
        if (p->release_threshold < p->total) { /* asked for: the default keeps everything */
            gs_pool_drain_caches(p, device); /* this thread's now, the others' at their next use */
            if (p->free_bytes > p->release_threshold)
                release_free_chunks(p, device, p->release_threshold);
        }
        pthread_mutex_unlock(&p->lock);
    }
}

/* The next back-off after a slow synchronization or a mark wait that gave up: 1 ms, twice as
 * long after each further one, at most 1 s. */
static uint64_t longer_backoff(uint64_t backoff)
{
    return backoff < BACKOFF_MIN_NS   ? BACKOFF_MIN_NS
           : backoff < BACKOFF_MAX_NS ? 2 * backoff
                                      : backoff;
}

/* The shim's own device synchronization: every free stamped before it is safe afterwards.
 * Returns its duration in nanoseconds, or 0 if the driver refused. */
static uint64_t shim_sync(gs_pool_device_t *p, int device)
{
    const gs_driver_t *drv = gs_driver();
    if (gs_capturing())
        return 0; /* it would invalidate the program's stream capture: grow instead */
    uint64_t start = gs_now_ns();
    uint64_t token = gs_pool_before_sync(device);
    CUresult rc = drv->ctx_synchronize ? GS_DRIVER_CALL(device, drv->ctx_synchronize())
                                       : CUDA_ERROR_NOT_SUPPORTED;
    uint64_t ns = gs_now_ns() - start + 1;
    atomic_fetch_add_explicit(&p->shim_syncs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->shim_sync_ns, ns, memory_order_relaxed);
    if (rc != CUDA_SUCCESS)
        return 0;
    mark_completed(p, token);
    /* A slow one means queued GPU work: no cheap ones for a while (1 ms, twice as long after
     * each further slow one, at most 1 s); quick ones shorten the back-off again. */
    uint64_t backoff = atomic_load_explicit(&p->backoff_ns, memory_order_relaxed);
    if (ns > gs_pool_cheap_sync_ns) {
        backoff = longer_backoff(backoff);
        atomic_store_explicit(&p->no_cheap_until, gs_now_ns() + backoff, memory_order_relaxed);
    } else {
        backoff /= 2;
    }
    atomic_store_explicit(&p->backoff_ns, backoff, memory_order_relaxed);
    return ns;
}

/* ---- asynchronous safe reuse by events (GPUSHIM_POOL_EVENTS=auto) ------------------------
 * Every stream that is not non-blocking waits for the legacy default stream, and the legacy
 * stream waits for them: an event recorded there completes only after all work issued before it
 * on every such stream. A mark is that event plus one on each non-blocking stream the program
 * created (streams.c keeps the list), plus a last event on each such stream it destroyed since
 * (work may still be queued there): once all have completed, every block freed before the mark
 * was recorded is safe, and no thread had to wait for the device. Recorded from an allocating
 * thread, whose current context is the device's; any error, or a non-blocking stream that cannot
 * be marked, turns the events off for the device and the synchronizations take over. Device lock
 * held, except where said. */

const char *gs_pool_events_off_reason(const gs_pool_device_t *p)
{
    if (gs_opts.pool_reuse != GS_REUSE_SAFE)
        return "immediate reuse";
    if (gs_opts.pool_events == GS_EVENTS_OFF)
        return "GPUSHIM_POOL_EVENTS=off";
    if (gs_streams_unmarkable())
        return "the program created a non-blocking stream the shim cannot mark (more than 16, or "
               "a green context's)";
    const gs_driver_t *drv = gs_driver();
    if (atomic_load_explicit(&p->event_broken, memory_order_relaxed) || !drv->event_create ||
        !drv->event_record || !drv->event_query || !drv->event_destroy || !drv->stream_query)
        return "the driver refused an event";
    return NULL;
}

/* What the pool keeps per marked stream (its registry slot): an event, armed when the last
 * mark found work queued on the stream and recorded it there. */
typedef struct stream_mark {
    CUevent event;
    bool armed;
} stream_mark_t;

static int query_stream_event(void *ctx, CUstream stream, void **slot)
{
    (void)ctx, (void)stream;
    stream_mark_t *m = *slot;
    if (m == NULL || !m->armed)
        return 0;
    CUresult rc = gs_driver()->event_query(m->event);
    if (rc == CUDA_SUCCESS)
        m->armed = false;
    return rc == CUDA_SUCCESS ? 0 : rc == CUDA_ERROR_NOT_READY ? 1 : 2;
}

/* The device's context was reset: the stream's event went with it. */
static int drop_stream_mark(void *ctx, CUstream stream, void **slot)
{
    (void)ctx, (void)stream;
    free(*slot);
    *slot = NULL;
    return 0;
}

/* Events of destroyed streams: drops the completed ones; returns 0 when none is left, 1 while
 * some are still queued, 2 on an error. Takes only the departed list's own lock. */
static int reap_departed(gs_pool_device_t *p)
{
    const gs_driver_t *drv = gs_driver();
    int rc = 0;
    pthread_mutex_lock(&p->departed_lock);
    for (gs_pool_departed_t **link = &p->departed; *link;) {
        gs_pool_departed_t *d = *link;
        CUresult q = drv->event_query(d->event);
        if (q == CUDA_ERROR_NOT_READY) {
            rc = rc ? rc : 1;
            link = &d->next;
            continue;
        }
        if (q != CUDA_SUCCESS)
            rc = 2;
        drv->event_destroy(d->event);
        *link = d->next;
        free(d);
    }
    pthread_mutex_unlock(&p->departed_lock);
    return rc;
}

/* How long ago then was, from a clock read before the device lock (then may be later). */
static inline uint64_t age(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

/* Marks that have completed, oldest first, make completed cover what they marked. */
static void poll_event(gs_pool_device_t *p, int device)
{
    while (p->mark_count > 0 && !gs_capturing()) {
        CUresult rc = gs_driver()->event_query(p->marks[p->mark_head].event);
        int streams = rc == CUDA_SUCCESS ? gs_streams_each(device, query_stream_event, NULL) : 0;
        int departed = rc == CUDA_SUCCESS && streams == 0 ? reap_departed(p) : 0;
        if (rc == CUDA_ERROR_NOT_READY || streams == 1 || departed == 1)
            return;
        if (rc != CUDA_SUCCESS || streams || departed) {
            p->mark_count = 0;
            atomic_store(&p->event_broken, true);
            return;
        }
        mark_completed(p, p->marks[p->mark_head].token);
        p->event_recycles++;
        p->mark_head = (p->mark_head + 1) % MARKS;
        p->mark_count--;
    }
}

static int count_stream(void *ctx, CUstream stream, void **slot)
{
    (void)stream, (void)slot;
    ++*(int *)ctx;
    return 0;
}

/* An idle stream needs no event: all work issued to it so far is done. */
static int record_stream_event(void *ctx, CUstream stream, void **slot)
{
    const gs_driver_t *drv = gs_driver();
    int device = *(const int *)ctx;
    stream_mark_t *m = *slot;
    CUresult idle = GS_DRIVER_CALL(device, drv->stream_query(stream));
    if (idle == CUDA_SUCCESS) {
        if (m)
            m->armed = false;
        return 0;
    }
    if (idle != CUDA_ERROR_NOT_READY)
        return 1;
    if (m == NULL) {
        if ((m = calloc(1, sizeof *m)) == NULL)
            return 1;
        if (GS_DRIVER_CALL(device, drv->event_create(&m->event, CU_EVENT_DISABLE_TIMING)) !=
            CUDA_SUCCESS) {
            free(m);
            return 1;
        }
        *slot = m;
    }
    m->armed = GS_DRIVER_CALL(device, drv->event_record(m->event, stream)) == CUDA_SUCCESS;
    return !m->armed;
}

/* Marks the work issued so far: when none is in flight, or, while the program has no
 * non-blocking stream (whose events a mark would need as well), when the newest is at least
 * MARK_INTERVAL_NS old and fewer than MARKS are in flight. Several marks let the pool wait for an
 * old one (wait_for_mark) rather than for all queued work. Blocks pending in thread caches are
 * covered too. */
static void record_event(gs_pool_device_t *p, int device, uint64_t now)
{
    const gs_driver_t *drv = gs_driver();
    if (p->mark_count == MARKS || gs_capturing())
        return; /* legacy-stream work would invalidate a capture on a blocking stream */
    if (quiet_now(p, device))
        return; /* nothing issued since the latest mark or synchronization: it covers all */
    if (p->mark_count > 0) {
        int streams = 0;
        unsigned newest = (p->mark_head + p->mark_count - 1) % MARKS;
        if (age(now, p->marks[newest].recorded_ns) < MARK_INTERVAL_NS ||
            gs_streams_each(device, count_stream, &streams) != 0 || streams > 0)
            return;
    }
    unsigned slot = (p->mark_head + p->mark_count) % MARKS;
    CUevent *event = &p->marks[slot].event;
    if (*event == NULL &&
        GS_DRIVER_CALL(device, drv->event_create(event, CU_EVENT_DISABLE_TIMING)) != CUDA_SUCCESS) {
        *event = NULL;
        atomic_store(&p->event_broken, true);
        return;
    }
    uint64_t token = gs_pool_before_sync(device);
    if (GS_DRIVER_CALL(device, drv->event_record(*event, CU_STREAM_LEGACY)) != CUDA_SUCCESS ||
        (p->mark_count == 0 && gs_streams_each(device, record_stream_event, &device) != 0)) {
        atomic_store(&p->event_broken, true);
        return;
    }
    p->marks[slot].token = token;
    p->marks[slot].recorded_ns = now;
    p->mark_count++;
}

/* A marked stream is about to be destroyed (registry lock held, device lock not): if work is
 * still queued on it, a last event joins the departed list, and no mark completes before it
 * does. Any failure turns the events off, since that work could not be seen otherwise. */
void gs_pool_stream_destroying(int device, CUstream stream, void **slot)
{
    gs_pool_device_t *p = &gs_pools[device];
    const gs_driver_t *drv = gs_driver();
    stream_mark_t *m = *slot;
    CUevent event = m ? m->event : NULL;
    *slot = NULL;
    free(m);
    CUresult idle = CUDA_SUCCESS;
    if (atomic_load_explicit(&p->ready, memory_order_acquire) &&
        gs_pool_events_off_reason(p) == NULL)
        idle = drv->stream_query(stream);
    if (idle == CUDA_SUCCESS) { /* nothing queued, or nobody needs to know */
        if (event)
            drv->event_destroy(event);
        return;
    }
    gs_pool_departed_t *d = calloc(1, sizeof *d);
    if (idle != CUDA_ERROR_NOT_READY || d == NULL ||
        (event == NULL && drv->event_create(&event, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) ||
        drv->event_record(event, stream) != CUDA_SUCCESS) {
        if (event)
            drv->event_destroy(event);
        free(d);
        atomic_store(&p->event_broken, true);
        return;
    }
    d->event = event;
    pthread_mutex_lock(&p->departed_lock);
    d->next = p->departed;
    p->departed = d;
    pthread_mutex_unlock(&p->departed_lock);
}

/* Device lock held (let go while it yields between polls). The pool would grow, but pending
 * blocks could serve once the GPU has passed a mark in flight: waits, polling, for the oldest
 * mark that covers at least size pending bytes, at most MARK_WAIT_NS. The GPU is then still busy
 * with the work queued after that mark, so this costs the CPU the time it was ahead, not GPU time,
 * and the pool stays near what the program holds instead of growing by what it freed while the GPU
 * was behind. Bounded, so that a long kernel (or one waiting for the host) costs one such wait:
 * after one gives up, none for a while (as for slow synchronizations). Returns whether that mark
 * completed. */
static bool wait_for_mark(gs_pool_device_t *p, int device, uint64_t size, uint64_t now)
{
    /* Only while the GPU is behind: an idle one completes a mark within microseconds, and then
     * a synchronization is as cheap. */
    if (p->mark_count == 0 || now < p->mark_wait_until ||
        age(now, p->marks[p->mark_head].recorded_ns) < MARK_INTERVAL_NS)
        return false;
    uint64_t covered[MARKS] = {0}; /* pending bytes each mark covers beyond the older ones */
    int walked = 0;                /* a bounded look: past it, blocks count as not covered */
    for (const gs_pool_block_t *b = p->pending; b && walked < 1024; b = b->next_free, walked++)
        for (unsigned i = 0; i < p->mark_count; i++)
            if (b->epoch <= p->marks[(p->mark_head + i) % MARKS].token) {
                covered[i] += b->size;
                break;
            }
    unsigned needed = 0; /* marks to complete, oldest first */
    uint64_t bytes = 0;
    while (needed < p->mark_count && bytes < size)
        bytes += covered[needed++];
    if (bytes < size)
        return false;
    p->mark_waits++;
    uint64_t start = gs_now_ns(), recycles = p->event_recycles + needed;
    bool completed;
    for (int polls = 0;; polls++) {
        poll_event(p, device);
        if (p->event_recycles >= recycles ||
            atomic_load_explicit(&p->event_broken, memory_order_relaxed)) {
            completed = p->event_recycles >= recycles;
            break;
        }
        if (gs_now_ns() - start > MARK_WAIT_NS) {
            completed = false;
            break;
        }
        if (polls > 16) { /* let other threads use the pool meanwhile */
            pthread_mutex_unlock(&p->lock);
            sched_yield();
            pthread_mutex_lock(&p->lock);
        }
    }
    uint64_t end = gs_now_ns();
    p->mark_wait_ns += end - start;
    if (completed) {
        p->mark_wait_backoff_ns /= 2;
    } else {
        p->mark_waits_given_up++;
        p->mark_wait_backoff_ns = longer_backoff(p->mark_wait_backoff_ns);
        p->mark_wait_until = end + p->mark_wait_backoff_ns;
    }
    return completed;
}

/* Device lock held: only when pending bytes are needed. */
static void sync_and_recycle(gs_pool_device_t *p, int device)
{
    if (shim_sync(p, device))
        recycle_pending(p);
}

/* Safe reuse at pool speed in tight loops: a synchronization of an idle device costs a few
 * microseconds, so when a thread's cache holds many pending blocks, one synchronization makes
 * them all reusable. On a busy device it would wait for queued work: after a slow one there are
 * none for a while (see shim_sync) and the pool grows instead. If another thread is
 * synchronizing, waiting for it is as good. Returns whether a synchronization completed. */
bool gs_pool_sync_if_cheap(gs_pool_device_t *p, int device)
{
    if (gs_opts.pool_reuse != GS_REUSE_SAFE || gs_capturing())
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

/* A freed block goes to the free lists, or to the pending list until it is safe (lock held). */
void gs_pool_release(gs_pool_device_t *p, gs_pool_block_t *b)
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

/* ---- growth and release (device lock held) ---------------------------------------------- */

/* reserved counts the device heaps only (against GPUSHIM_POOL_MAX); the spill heap's bytes are
 * its own (against GPUSHIM_MANAGED_LIMIT). */
static void add_reserved(gs_pool_device_t *p, int heap, uint64_t bytes)
{
    if (heap != HEAP_SPILL)
        p->reserved += bytes;
    p->heaps[heap].reserved += bytes;
    if (p->reserved > p->reserved_peak)
        p->reserved_peak = p->reserved;
    uint64_t both = p->reserved + p->heaps[HEAP_SPILL].reserved;
    if (both > p->both_peak) {
        p->both_peak = both;
        p->both_peak_device = p->reserved;
        p->both_peak_spilled = p->heaps[HEAP_SPILL].reserved;
    }
}

static void remove_reserved(gs_pool_device_t *p, int heap, uint64_t bytes)
{
    if (heap != HEAP_SPILL)
        p->reserved -= bytes;
    p->heaps[heap].reserved -= bytes;
    p->releases++;
}

/* A new chunk joins the pool, its one block free. */
static void link_chunk(gs_pool_device_t *p, gs_pool_chunk_t *c)
{
    c->next = p->chunks;
    p->chunks = c;
    p->chunk_count++;
    list_push(p, c->first);
}

static gs_pool_block_t *last_block(const gs_pool_chunk_t *c)
{
    gs_pool_block_t *b = c->first;
    while (b->next_addr)
        b = b->next_addr;
    return b;
}

/* Grows the large heap's expandable range so that a block of need bytes fits at its end: maps
 * what the free block there lacks, at least 1/128 of the heap (so growth stays rare without
 * leaving much unused), never past the maximum. */
static CUresult expand(gs_pool_device_t *p, int device, uint64_t need)
{
    gs_pool_vmm_t *v = &p->vmm;
    gs_pool_block_t *last = v->chunk ? last_block(v->chunk) : NULL;
    uint64_t tail = last && atomic_load_explicit(&last->state, memory_order_relaxed) == BLOCK_FREE
                        ? last->size
                        : 0;
    uint64_t lacking = round_up(need - (tail < need ? tail : 0), v->granularity);
    uint64_t step = round_up(p->heaps[HEAP_LARGE].reserved / 128, v->granularity);
    if (step > p->chunk_size)
        step = p->chunk_size;
    uint64_t bytes = lacking > step ? lacking : step;
    if (p->reserved + bytes > p->max)
        bytes = lacking;
    if (p->reserved + bytes > p->max)
        return CUDA_ERROR_OUT_OF_MEMORY;
    p->grow_calls++;
    CUresult rc = gs_pool_vmm_map(p, device, bytes);
    if (rc != CUDA_SUCCESS)
        return rc;
    gs_pool_chunk_t *c = v->chunk;
    if (c == NULL) { /* the first piece: the chunk that spans the range starts, of no context */
        c = calloc(1, sizeof *c);
        if (c) {
            c->base = v->base;
            c->heap = HEAP_LARGE;
            c->expandable = true;
            c->first = new_block(p, c, v->base, bytes, device);
        }
        if (c == NULL || c->first == NULL) {
            free(c);
            gs_pool_vmm_unmap_from(p, device, 0, UINT64_MAX);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        link_chunk(p, c);
        v->chunk = c;
    } else if (tail) {
        list_remove(p, last);
        last->size += bytes;
        list_push(p, last);
    } else {
        gs_pool_block_t *b = new_block(p, c, c->base + c->size, bytes, device);
        if (b == NULL) {
            gs_pool_vmm_unmap_from(p, device, c->size, UINT64_MAX);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        b->prev_addr = last;
        last->next_addr = b;
        list_push(p, b);
    }
    c->size = v->mapped;
    add_reserved(p, HEAP_LARGE, bytes);
    return CUDA_SUCCESS;
}

/* Grows a heap so that it can serve need: the large heap's expandable range where there is one
 * (a request over GPUSHIM_POOL_CHUNK still gets a chunk of its own, which legacy IPC can share),
 * else a new chunk. */
static CUresult grow_heap(gs_pool_device_t *p, int device, uint64_t need, int heap)
{
    const gs_driver_t *drv = gs_driver();
    if (heap == HEAP_LARGE && p->vmm.off == NULL && need <= p->chunk_size) {
        CUresult rc = expand(p, device, need);
        if (rc == CUDA_SUCCESS || rc == CUDA_ERROR_OUT_OF_MEMORY)
            return rc;
        p->vmm.off = "the driver refused to map memory"; /* chunks from now on */
    }
    /* Grow the heap by 1/32 of what it has already (so unused reserve stays small), between
     * 2 MiB and GPUSHIM_POOL_CHUNK, or by the request if it is larger; never past the maximum. */
    uint64_t step = p->heaps[heap].reserved / 32;
    if (step < GS_POOL_GRANULE)
        step = GS_POOL_GRANULE;
    if (step > p->chunk_size)
        step = p->chunk_size;
    uint64_t size = round_up(need > step ? need : step, GS_POOL_GRANULE);
    uint64_t held = heap == HEAP_SPILL ? p->heaps[HEAP_SPILL].reserved : p->reserved;
    uint64_t max = heap == HEAP_SPILL ? p->spill_max : p->max;
    if (size < need || held + size < held || held + size > max) { /* also: sizes near 2^64 */
        uint64_t least = round_up(need, GS_POOL_GRANULE);
        if (least < need || held + least < held || held + least > max)
            return CUDA_ERROR_OUT_OF_MEMORY;
        size = least;
    }
    gs_pool_chunk_t *chunk = calloc(1, sizeof *chunk);
    if (chunk == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUdeviceptr base = 0;
    p->grow_calls++;
    chunk->heap = heap;
    CUresult rc = gs_pool_chunk_take(p, device, chunk, &base, size);
    if (rc != CUDA_SUCCESS) {
        free(chunk);
        return rc;
    }
    chunk->base = base;
    chunk->size = size;
    if (drv->ctx_get_current == NULL || drv->ctx_get_current(&chunk->ctx) != CUDA_SUCCESS)
        chunk->ctx = NULL;
    chunk->first = new_block(p, chunk, base, size, device);
    if (chunk->first == NULL) {
        gs_pool_chunk_give_back(device, chunk);
        free(chunk);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    link_chunk(p, chunk);
    add_reserved(p, heap, size);
    return CUDA_SUCCESS;
}

static CUresult grow(gs_pool_device_t *p, int device, uint64_t need)
{
    return grow_heap(p, device, need, heap_for(need));
}

/* Unmaps the pieces at the end of the expandable range that its last block, a free one, spans,
 * while the free lists hold more than keep bytes; returns whether it unmapped any. */
static bool shrink_expandable(gs_pool_device_t *p, int device, uint64_t keep)
{
    gs_pool_chunk_t *c = p->vmm.chunk;
    gs_pool_block_t *last = last_block(c);
    if (atomic_load(&last->state) != BLOCK_FREE)
        return false;
    uint64_t unmapped =
        gs_pool_vmm_unmap_from(p, device, last->base - c->base, p->free_bytes - keep);
    if (unmapped == 0)
        return false;
    list_remove(p, last);
    last->size -= unmapped;
    c->size = p->vmm.mapped;
    remove_reserved(p, HEAP_LARGE, unmapped);
    if (last->size > 0) {
        list_push(p, last);
        return true;
    }
    gs_pool_block_t *before = last->prev_addr;
    gs_ptrmap_remove(last->base, NULL);
    recycle_block(p, last);
    if (before) {
        before->next_addr = NULL;
        return true;
    }
    /* Nothing is mapped any more: the chunk goes too (the range stays reserved). */
    for (gs_pool_chunk_t **link = &p->chunks; *link; link = &(*link)->next)
        if (*link == c) {
            *link = c->next;
            break;
        }
    free(c);
    p->chunk_count--;
    p->vmm.chunk = NULL;
    return true;
}

/* Gives wholly free chunks back to the driver, and the expandable range's free end, while the
 * free lists hold more than keep bytes; returns how many chunks or ends. */
static int release_free_chunks(gs_pool_device_t *p, int device, uint64_t keep)
{
    int released = 0;
    if (gs_capturing())
        return 0; /* cuMemFree waits for the device: not while a stream is capturing */
    for (gs_pool_chunk_t **link = &p->chunks; *link && p->free_bytes > keep;) {
        gs_pool_chunk_t *c = *link;
        gs_pool_block_t *b = c->first;
        if (!whole_chunk(b) || atomic_load(&b->state) != BLOCK_FREE) {
            link = &c->next;
            continue;
        }
        list_remove(p, b);
        gs_ptrmap_remove(b->base, NULL);
        if (gs_pool_chunk_give_back(device, c) != CUDA_SUCCESS) {
            list_push(p, b); /* keep it; the driver refused */
            map_block(b);
            link = &c->next;
            continue;
        }
        recycle_block(p, b);
        *link = c->next;
        remove_reserved(p, c->heap, c->size);
        p->chunk_count--;
        free(c);
        released++;
    }
    if (p->vmm.chunk && p->free_bytes > keep && shrink_expandable(p, device, keep))
        released++;
    return released;
}

int gs_pool_chunks_of_context(const gs_pool_device_t *p, CUcontext ctx)
{
    int of_ctx = 0, others = 0;
    for (const gs_pool_chunk_t *c = p->chunks; c; c = c->next) {
        if (c->expandable)
            continue; /* mapped memory is not a context's: it survives the context */
        if (c->ctx == ctx)
            of_ctx++;
        else
            others++;
    }
    return of_ctx == 0 ? 0 : others == 0 ? 1 : -1;
}

void gs_pool_drop_departed(gs_pool_device_t *p, bool destroy_events)
{
    pthread_mutex_lock(&p->departed_lock);
    for (gs_pool_departed_t *d = p->departed, *next; d; d = next) {
        next = d->next;
        if (destroy_events && gs_driver()->event_destroy)
            gs_driver()->event_destroy(d->event);
        free(d);
    }
    p->departed = NULL;
    pthread_mutex_unlock(&p->departed_lock);
}

void gs_pool_forget_streams(int device)
{
    gs_streams_each(device, drop_stream_mark, NULL);
}

void gs_pool_forget_chunks(gs_pool_device_t *p)
{
    gs_pool_vmm_unmap_all(p); /* mapped memory is not the context's: it would stay */
    for (gs_pool_chunk_t *c = p->chunks, *next; c; c = next) {
        next = c->next;
        for (gs_pool_block_t *b = c->first, *after; b; b = after) {
            after = b->next_addr;
            recycle_block(p, b); /* stale frees and recent-table entries no longer match */
        }
        gs_pool_chunk_forget(p - gs_pools, c);
        free(c);
    }
    p->chunks = NULL;
    memset(p->heaps, 0, sizeof p->heaps);
    p->pending = NULL;
    p->pending_bytes = p->free_bytes = p->reserved = p->chunk_count = p->initial = 0;
    for (int i = 0; i < MARKS; i++)
        p->marks[i].event = NULL; /* they belonged to the context, as did the departed streams' */
    p->mark_count = 0;
    atomic_store(&p->event_broken, false);
    gs_pool_drop_departed(p, false);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
}

/* ---- per-device set-up and the slow path ----------------------------------------------- */

void gs_pool_device_init(gs_pool_device_t *p, int device)
{
    const gs_driver_t *drv = gs_driver();
    size_t total = 0;
    if (drv->device_total_mem == NULL || drv->device_total_mem(&total, device) != CUDA_SUCCESS)
        total = 0;
    int align = 0;
    if (drv->device_get_attribute)
        drv->device_get_attribute(&align, CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT, device);
    p->total = total;
    p->managed = gs_opts.mode == GS_MODE_MANAGED;
    uint64_t managed_cap = gs_size_resolve(gs_opts.managed_limit, total);
    if (p->managed) {
        p->max = managed_cap ? managed_cap : UINT64_MAX; /* managed memory may pass the device */
    } else {
        p->max = gs_size_resolve(gs_opts.pool_max, total);
        if (p->max == 0 || (total && p->max > total))
            p->max = total ? total : UINT64_MAX;
        uint64_t budget = gs_budget_limit(device);
        if (budget && budget < p->max)
            p->max = budget; /* GPUSHIM_DEVICE_LIMIT */
        p->spill = gs_opts.on_oom == GS_ON_OOM_MANAGED;
        p->spill_max = managed_cap ? managed_cap : UINT64_MAX;
    }
    p->chunk_size = gs_size_resolve(gs_opts.pool_chunk, total);
    if (p->chunk_size < GS_POOL_GRANULE)
        p->chunk_size = GS_POOL_GRANULE;
    p->pending_max = gs_size_resolve(gs_opts.pool_pending_max, total);
    p->release_threshold = gs_size_resolve(gs_opts.pool_release_threshold, total);
    p->cache_budget = gs_opts.pool_reuse != GS_REUSE_SAFE ? CACHE_BYTES_IMMEDIATE
                      : p->pending_max < CACHE_BYTES      ? p->pending_max
                                                          : CACHE_BYTES;
    p->pitch_align = (uint64_t)align > GS_POOL_ALIGN ? (uint64_t)align : GS_POOL_ALIGN;
    atomic_store(&p->epoch, 1);
    atomic_store(&p->completed, 0);
    if (p->managed)
        p->vmm.off = "managed memory is not mapped";
    else
        gs_pool_vmm_init(p, device);
    uint64_t initial = gs_size_resolve(gs_opts.pool_initial, total);
    atomic_store_explicit(&p->ready, true, memory_order_release);
    if (initial > 0 && grow(p, device, initial) == CUDA_SUCCESS)
        p->initial = p->reserved;
    else if (initial > 0)
        gs_log_warning("GPUSHIM_POOL_INITIAL: could not reserve %llu bytes on device %d; the pool "
                       "grows on demand",
                       (unsigned long long)initial, device);
}

static gs_pool_block_t *spilled(gs_pool_device_t *p, gs_pool_block_t *b, uint64_t size)
{
    if (b) {
        p->spilled_allocations++;
        p->spilled_bytes += size;
    }
    return b;
}

/* GPUSHIM_ON_OOM=managed, and the device heaps cannot grow: a free block of the spill heap, or
 * what the thread caches and pending blocks give back (a mark the GPU passes, or a cheap
 * synchronization: the same back-off as growth, so a busy GPU is not waited for at every
 * allocation), or a new chunk of managed memory. Device chunks are not given back to make room:
 * taking them again is what made spilling thrash. */
static gs_pool_block_t *spill(gs_pool_device_t *p, int device, uint64_t size, bool events,
                              uint64_t now, CUresult *rc)
{
    gs_pool_block_t *b = find_in(&p->heaps[HEAP_SPILL], size);
    if (b == NULL) {
        gs_pool_drain_caches(p, device);
        if (p->pending_bytes >= size &&
            ((events && !gs_capturing() && wait_for_mark(p, device, size, now)) ||
             gs_pool_sync_if_cheap(p, device)))
            recycle_pending(p);
        if ((b = find_anywhere(p, size)) != NULL) {
            *rc = CUDA_SUCCESS;
            return b;
        }
        b = find_in(&p->heaps[HEAP_SPILL], size);
    }
    if (b == NULL && (*rc = grow_heap(p, device, size, HEAP_SPILL)) == CUDA_SUCCESS)
        b = find_in(&p->heaps[HEAP_SPILL], size);
    if (b)
        *rc = CUDA_SUCCESS;
    return spilled(p, b, size);
}

/* The slow path: the central pool, then synchronization (safe reuse), then growth, then
 * release of free chunks and caches (or spilling), then out of memory. */
CUresult gs_pool_central_alloc(gs_pool_device_t *p, int device, uint64_t size,
                               gs_pool_block_t **out)
{
    CUresult rc = CUDA_SUCCESS;
    /* The marks' clock, read before the lock: under it, 16 threads queue for every nanosecond. */
    uint64_t now = gs_opts.pool_reuse == GS_REUSE_SAFE && gs_opts.pool_events != GS_EVENTS_OFF
                       ? gs_now_ns()
                       : 0;
    pthread_mutex_lock(&p->lock);
    bool events = gs_pool_events_off_reason(p) == NULL;
    if (events)
        poll_event(p, device);
    /* Pending blocks that a completed event or another thread's synchronization covers go back
     * to the free lists before the search, where they can coalesce with their neighbours. */
    if (p->pending && p->recycled_upto < atomic_load_explicit(&p->completed, memory_order_acquire))
        recycle_pending(p);
    gs_pool_block_t *b = find_free(p, size);
    /* Spilling at the maximum: a free spilled block rather than a wait for the GPU. */
    if (b == NULL && p->spill && p->reserved + size > p->max)
        b = spilled(p, find_in(&p->heaps[HEAP_SPILL], size), size);
    /* Synchronize rather than grow when pending bytes could serve and are many: past the bound,
     * past 1/16 of the pool (unless an event will recycle them without a wait), or where growth
     * would pass the maximum. */
    if (b == NULL && p->pending_bytes >= size &&
        (p->pending_bytes >= p->pending_max || (!events && p->pending_bytes >= p->reserved / 16) ||
         p->reserved + size > p->max)) {
        sync_and_recycle(p, device);
        b = find_free(p, size);
    }
    /* Then wait for an old mark (queued work after it keeps the GPU busy), then synchronize if
     * that is cheap, and only then grow. */
    if (b == NULL && events && p->pending_bytes >= size && !gs_capturing() &&
        wait_for_mark(p, device, size, now)) {
        recycle_pending(p);
        b = find_free(p, size);
    }
    if (b == NULL && p->pending_bytes >= size && gs_pool_sync_if_cheap(p, device)) {
        recycle_pending(p);
        b = find_free(p, size);
    }
    /* GPUSHIM_POOL_INITIAL promises no driver calls until the pool outgrows it: small blocks
     * come from the initial chunk too. */
    if (b == NULL && p->initial && p->reserved <= p->initial)
        b = find_anywhere(p, size);
    if (b == NULL) {
        rc = grow(p, device, size);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY && p->spill) {
            b = spill(p, device, size, events, now, &rc);
        } else if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            /* Memory is short: everything free anywhere goes back, then one more try. */
            gs_pool_drain_caches(p, device);
            if (p->pending_bytes)
                sync_and_recycle(p, device);
            b = find_anywhere(p, size);
            if (b == NULL) {
                release_free_chunks(p, device, 0);
                rc = grow(p, device, size);
            }
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
    if (b == NULL && rc == CUDA_ERROR_OUT_OF_MEMORY && (p->managed || p->spill))
        p->refused_at_cap++; /* the cap of managed memory, or the driver's refusal */
    if (events)
        record_event(p, device, now);
    pthread_mutex_unlock(&p->lock);
    *out = b;
    return rc;
}
