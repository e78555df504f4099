/* host_pool.c: pinned host memory (cuMemHostAlloc, cuMemAllocHost; cudaHostAlloc and
 * cudaMallocHost reach these), GPUSHIM_HOST_POOL.
 *
 * Pinning and unpinning pages costs about a millisecond a pair (38 ms at 64 MiB, measured on an
 * H200 host), so programs that stage through pinned buffers pay it at every allocation. With the
 * pool on, a freed block is kept whole, in its size class (8 per power of two, at least 4 KiB,
 * at most 12.5% larger than asked) and with its flags, and handed out again for a request of the
 * same class and flags. Blocks are never split, so the driver's answers for them
 * (cuMemHostGetFlags, cuMemHostGetDevicePointer, the pointer's attributes) stay those of a whole
 * allocation with the program's flags; only the range size is the rounded one, and the shim
 * answers that query with the size the program asked for (gs_host_pool_range).
 *
 * Safe reuse, as for device memory: cuMemFreeHost waits until GPU work issued before it (an
 * asynchronous copy from the buffer, say) is done; a kept block is handed out again only after
 * a device synchronization that began after its free has completed: the program's own
 * (cuCtxSynchronize), or one the shim makes when a block of the class is pending and
 * synchronizations are cheap (an idle device; after a slow one, none for 1 ms, doubling). While
 * no GPU work was issued since the latest completed synchronization (the work wrappers of
 * core/work.c tell), a freed block is reusable at once. In a process that sees several devices
 * synchronizations of one device do not count: blocks wait, and past HOST_PENDING_MAX the oldest
 * goes back to the driver (whose cuMemFreeHost waits itself). Kept blocks are capped at
 * HOST_KEEP_MAX; past it a freed block goes back to the driver at once.
 *
 * With the pool off (GPUSHIM_MODE=off by default) every call goes to the driver, counted. */
#include "gs.h"

#include <pthread.h>
#include <stdlib.h>

#define HOST_MIN 4096ull
#define HOST_KEEP_MAX (1ull << 30)     /* free blocks kept for reuse, bytes */
#define HOST_PENDING_MAX (256ull << 20) /* freed blocks waiting for a synchronization, bytes */
#define HOST_BUCKETS 1024
#define BACKOFF_MIN_NS 1000000ull
#define BACKOFF_MAX_NS 1000000000ull

typedef struct host_block {
    void *ptr;
    uint64_t size, requested; /* size: the class's, what the driver allocated */
    unsigned flags;           /* the program's flags; alloc_host: cuMemAllocHost */
    bool alloc_host, live;
    uint64_t stamp;                 /* the synchronization that must complete before reuse */
    struct host_block *next_by_ptr; /* the table of blocks by address */
    struct host_block *next;        /* free or pending list, oldest first */
} host_block_t;

static struct {
    pthread_mutex_t lock;
    host_block_t *by_ptr[HOST_BUCKETS];
    host_block_t *free_head, *pending_head, *pending_tail;
    uint64_t free_bytes, pending_bytes;
    uint64_t allocations, reused, frees, driver_allocations, driver_frees, failures;
    uint64_t in_use, peak;
    uint64_t syncs, no_sync_until, backoff_ns;
} gs_host = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* A synchronization this quick (ns) means an idle device, as for the device pool; a variable so
 * that tests under valgrind can raise it. */
uint64_t gs_host_pool_cheap_sync_ns = 50000;

/* Safe reuse: frees are stamped with epoch; the synchronization that takes token t covers those
 * stamped t; completed is the latest token whose synchronization completed. */
static _Atomic uint64_t gs_host_epoch = 1, gs_host_completed;

bool gs_host_pool_on(void)
{
    return gs_opts.host_pool == GS_HOST_POOL_ON ||
           (gs_opts.host_pool == GS_HOST_POOL_AUTO && gs_opts.mode != GS_MODE_OFF);
}

bool gs_host_pool_active(void)
{
    pthread_mutex_lock(&gs_host.lock);
    bool active = gs_host.allocations + gs_host.failures > 0;
    pthread_mutex_unlock(&gs_host.lock);
    return active;
}

static inline size_t bucket(const void *ptr)
{
    uintptr_t p = (uintptr_t)ptr;
    return (size_t)((p >> 12) ^ (p >> 22)) % HOST_BUCKETS;
}

static host_block_t *lookup(const void *ptr, host_block_t ***link_out)
{
    host_block_t **link = &gs_host.by_ptr[bucket(ptr)];
    for (; *link; link = &(*link)->next_by_ptr)
        if ((*link)->ptr == ptr)
            break;
    if (link_out)
        *link_out = link;
    return *link;
}

/* The class's size: at least 4 KiB, then 8 sizes per power of two. 0 for sizes no host has. */
static uint64_t class_size(uint64_t bytes)
{
    if (bytes <= HOST_MIN)
        return HOST_MIN;
    if (bytes > (1ull << 62))
        return 0;
    int fl = 63 - __builtin_clzll(bytes);
    uint64_t step = 1ull << (fl - 3);
    return (bytes + step - 1) / step * step;
}

/* Every stamped block whose synchronization completed moves to the free list (lock held). */
static void recycle(void)
{
    uint64_t completed = atomic_load(&gs_host_completed);
    host_block_t **link = &gs_host.pending_head;
    host_block_t *last = NULL;
    while (*link) {
        host_block_t *b = *link;
        if (b->stamp > completed) {
            last = b;
            link = &b->next;
            continue;
        }
        *link = b->next;
        gs_host.pending_bytes -= b->size;
        b->next = gs_host.free_head;
        gs_host.free_head = b;
        gs_host.free_bytes += b->size;
    }
    gs_host.pending_tail = last;
}

static host_block_t *take_free(uint64_t size, unsigned flags, bool alloc_host)
{
    for (host_block_t **link = &gs_host.free_head; *link; link = &(*link)->next) {
        host_block_t *b = *link;
        if (b->size == size && b->flags == flags && b->alloc_host == alloc_host) {
            *link = b->next;
            gs_host.free_bytes -= b->size;
            return b;
        }
    }
    return NULL;
}

static bool pending_match(uint64_t size, unsigned flags, bool alloc_host)
{
    for (host_block_t *b = gs_host.pending_head; b; b = b->next)
        if (b->size == size && b->flags == flags && b->alloc_host == alloc_host)
            return true;
    return false;
}

/* One synchronization of the only device, if recent ones were cheap (lock not held). */
static void sync_if_cheap(void)
{
    const gs_driver_t *drv = gs_driver();
    uint64_t now = gs_now_ns();
    pthread_mutex_lock(&gs_host.lock);
    bool skip = now < gs_host.no_sync_until;
    pthread_mutex_unlock(&gs_host.lock);
    if (skip || drv->ctx_synchronize == NULL || gs_capturing())
        return;
    uint64_t token = gs_host_pool_before_sync();
    CUresult rc = drv->ctx_synchronize();
    uint64_t took = gs_now_ns() - now;
    if (rc == CUDA_SUCCESS)
        gs_host_pool_after_sync(token);
    pthread_mutex_lock(&gs_host.lock);
    gs_host.syncs++;
    if (took > gs_host_pool_cheap_sync_ns) {
        gs_host.backoff_ns = gs_host.backoff_ns ? 2 * gs_host.backoff_ns : BACKOFF_MIN_NS;
        if (gs_host.backoff_ns > BACKOFF_MAX_NS)
            gs_host.backoff_ns = BACKOFF_MAX_NS;
        gs_host.no_sync_until = gs_now_ns() + gs_host.backoff_ns;
    } else {
        gs_host.backoff_ns = 0;
    }
    pthread_mutex_unlock(&gs_host.lock);
}

/* Every kept free block goes back to the driver (pinned memory ran out); returns how many. */
static int give_back_kept(void)
{
    const gs_driver_t *drv = gs_driver();
    pthread_mutex_lock(&gs_host.lock);
    host_block_t *list = gs_host.free_head;
    gs_host.free_head = NULL;
    gs_host.free_bytes = 0;
    int count = 0;
    for (host_block_t *b = list; b; b = b->next, count++) {
        host_block_t **link;
        lookup(b->ptr, &link);
        *link = b->next_by_ptr;
    }
    gs_host.driver_frees += (uint64_t)count;
    pthread_mutex_unlock(&gs_host.lock);
    for (host_block_t *b = list, *next; b; b = next) {
        next = b->next;
        if (drv->mem_free_host)
            drv->mem_free_host(b->ptr);
        free(b);
    }
    return count;
}

/* The driver's own pinned allocation, by the entry point the program called. */
static CUresult driver_alloc(void **ptr, size_t bytes, unsigned int flags, bool alloc_host)
{
    return alloc_host ? GS_RAW(mem_alloc_host, ptr, bytes) : GS_RAW(mem_host_alloc, ptr, bytes, flags);
}

static void count_allocation(host_block_t *b)
{
    gs_host.allocations++;
    gs_host.in_use += b->requested;
    if (gs_host.in_use > gs_host.peak)
        gs_host.peak = gs_host.in_use;
}

CUresult gs_mem_host_alloc(void **ptr, size_t bytes, unsigned int flags, bool alloc_host)
{
    const gs_driver_t *drv = gs_driver();
    if (gs_depth > 0 || ptr == NULL || bytes == 0)
        return driver_alloc(ptr, bytes, flags, alloc_host);
    bool pooled = gs_host_pool_on();
    uint64_t size = pooled ? class_size(bytes) : bytes;
    if (size == 0) {
        pthread_mutex_lock(&gs_host.lock);
        gs_host.failures++;
        pthread_mutex_unlock(&gs_host.lock);
        return CUDA_ERROR_OUT_OF_MEMORY; /* as the driver says for sizes no host has */
    }
    host_block_t *b = NULL;
    if (pooled) {
        pthread_mutex_lock(&gs_host.lock);
        recycle();
        b = take_free(size, flags, alloc_host);
        bool wait = b == NULL && pending_match(size, flags, alloc_host) &&
                    gs_single_device_process();
        pthread_mutex_unlock(&gs_host.lock);
        if (wait) {
            gs_depth++;
            sync_if_cheap();
            gs_depth--;
            pthread_mutex_lock(&gs_host.lock);
            recycle();
            b = take_free(size, flags, alloc_host);
            pthread_mutex_unlock(&gs_host.lock);
        }
    }
    if (b == NULL) {
        void *fresh = NULL;
        gs_depth++;
        CUresult rc = driver_alloc(&fresh, size, flags, alloc_host);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY && give_back_kept() > 0) /* the host needs them */
            rc = driver_alloc(&fresh, size, flags, alloc_host);
        gs_depth--;
        if (rc != CUDA_SUCCESS || (b = calloc(1, sizeof *b)) == NULL) {
            if (rc == CUDA_SUCCESS && drv->mem_free_host)
                drv->mem_free_host(fresh);
            pthread_mutex_lock(&gs_host.lock);
            gs_host.failures++;
            pthread_mutex_unlock(&gs_host.lock);
            return rc == CUDA_SUCCESS ? CUDA_ERROR_OUT_OF_MEMORY : rc;
        }
        *b = (host_block_t){.ptr = fresh, .size = size, .flags = flags, .alloc_host = alloc_host};
        pthread_mutex_lock(&gs_host.lock);
        gs_host.driver_allocations++;
        host_block_t **link;
        lookup(fresh, &link);
        *link = b;
    } else {
        pthread_mutex_lock(&gs_host.lock);
        gs_host.reused++;
    }
    b->requested = bytes;
    b->live = true;
    count_allocation(b);
    pthread_mutex_unlock(&gs_host.lock);
    *ptr = b->ptr;
    return CUDA_SUCCESS;
}

/* The stamp of a free now: the latest synchronization's token if no work was issued since it
 * (and it is the latest taken), else the next one to be taken. */
static uint64_t free_stamp(void)
{
    uint64_t token;
    bool quiet = gs_work_host_quiet_token(&token);
    uint64_t epoch = atomic_load(&gs_host_epoch);
    return quiet && token + 1 == epoch ? token : epoch;
}

CUresult gs_mem_free_host(void *ptr)
{
    const gs_driver_t *drv = gs_driver();
    if (gs_depth > 0 || ptr == NULL)
        return GS_RAW(mem_free_host, ptr);
    pthread_mutex_lock(&gs_host.lock);
    host_block_t **link;
    host_block_t *b = lookup(ptr, &link);
    if (b == NULL || !b->live) {
        pthread_mutex_unlock(&gs_host.lock);
        return GS_RAW(mem_free_host, ptr); /* not ours, or a double free: the driver's answer */
    }
    b->live = false;
    gs_host.frees++;
    gs_host.in_use -= b->requested;
    host_block_t *give_back = NULL;
    if (!gs_host_pool_on() || gs_host.free_bytes + gs_host.pending_bytes + b->size > HOST_KEEP_MAX) {
        *link = b->next_by_ptr;
        give_back = b;
    } else {
        b->stamp = free_stamp();
        b->next = NULL;
        if (gs_host.pending_tail)
            gs_host.pending_tail->next = b;
        else
            gs_host.pending_head = b;
        gs_host.pending_tail = b;
        gs_host.pending_bytes += b->size;
        recycle();
        /* Too much waiting for a synchronization that may not come: the oldest goes back. */
        if (gs_host.pending_bytes > HOST_PENDING_MAX && gs_host.pending_head) {
            give_back = gs_host.pending_head;
            gs_host.pending_head = give_back->next;
            if (gs_host.pending_head == NULL)
                gs_host.pending_tail = NULL;
            gs_host.pending_bytes -= give_back->size;
            host_block_t **at;
            lookup(give_back->ptr, &at);
            *at = give_back->next_by_ptr;
        }
    }
    if (give_back)
        gs_host.driver_frees++;
    pthread_mutex_unlock(&gs_host.lock);
    CUresult rc = CUDA_SUCCESS;
    if (give_back) {
        gs_depth++;
        rc = drv->mem_free_host ? drv->mem_free_host(give_back->ptr) : CUDA_ERROR_NOT_SUPPORTED;
        gs_depth--;
        if (give_back != b)
            rc = CUDA_SUCCESS; /* the program's free succeeded; an old block went back */
        free(give_back);
    }
    return rc;
}

int gs_host_pool_range(CUdeviceptr ptr, CUdeviceptr *base, size_t *size)
{
    int rc = GS_NOT_OURS;
    pthread_mutex_lock(&gs_host.lock);
    host_block_t *b = lookup((void *)(uintptr_t)ptr, NULL);
    if (b == NULL) { /* an interior pointer: the table is by base; look through the live ones */
        for (size_t i = 0; i < HOST_BUCKETS && b == NULL; i++)
            for (host_block_t *h = gs_host.by_ptr[i]; h; h = h->next_by_ptr)
                if (h->live && ptr >= (uintptr_t)h->ptr && ptr < (uintptr_t)h->ptr + h->requested) {
                    b = h;
                    break;
                }
    }
    if (b && b->live && b->size != b->requested) {
        if (base)
            *base = (CUdeviceptr)(uintptr_t)b->ptr;
        if (size)
            *size = b->requested;
        rc = 0;
    }
    pthread_mutex_unlock(&gs_host.lock);
    return rc;
}

/* Only a process's one device counts: a synchronization of one device of several leaves work on
 * the others in flight. Returns 0 (no token) otherwise. */
uint64_t gs_host_pool_before_sync(void)
{
    if (!gs_host_pool_on() || !gs_single_device_process())
        return 0;
    uint64_t token = atomic_fetch_add(&gs_host_epoch, 1);
    gs_work_host_quiet_from(token);
    return token;
}

void gs_host_pool_after_sync(uint64_t token)
{
    uint64_t completed = atomic_load(&gs_host_completed);
    while (token > completed && !atomic_compare_exchange_weak(&gs_host_completed, &completed, token)) {
    }
}

void gs_host_pool_report(gs_buf_t *out, bool json)
{
    pthread_mutex_lock(&gs_host.lock);
    if (gs_host.allocations + gs_host.failures == 0) {
        pthread_mutex_unlock(&gs_host.lock);
        return;
    }
    const char *state = gs_host_pool_on() ? "on" : "off";
    if (json) {
        gs_buf_printf(out,
                      ",\n  \"host_pinned\": {\"pool\": \"%s\", \"allocations\": %llu, "
                      "\"reused\": %llu, \"frees\": %llu, \"failed\": %llu, \"in_use\": %llu, "
                      "\"peak\": %llu, \"kept\": %llu, \"pending\": %llu, "
                      "\"driver_allocations\": %llu, \"driver_frees\": %llu, "
                      "\"shim_synchronizations\": %llu}",
                      state, (unsigned long long)gs_host.allocations,
                      (unsigned long long)gs_host.reused, (unsigned long long)gs_host.frees,
                      (unsigned long long)gs_host.failures, (unsigned long long)gs_host.in_use,
                      (unsigned long long)gs_host.peak, (unsigned long long)gs_host.free_bytes,
                      (unsigned long long)gs_host.pending_bytes,
                      (unsigned long long)gs_host.driver_allocations,
                      (unsigned long long)gs_host.driver_frees, (unsigned long long)gs_host.syncs);
    } else {
        char in_use[32], peak[32], kept[32], pending[32];
        gs_buf_printf(out,
                      "gpushim: pinned host memory (pool %s): %llu allocation%s (%llu reused), "
                      "%llu free%s, %llu failed; %s in use now, peak %s; %s kept for reuse, %s "
                      "waiting for a synchronization; %llu driver allocation%s\n",
                      state, (unsigned long long)gs_host.allocations,
                      gs_host.allocations == 1 ? "" : "s", (unsigned long long)gs_host.reused,
                      (unsigned long long)gs_host.frees, gs_host.frees == 1 ? "" : "s",
                      (unsigned long long)gs_host.failures, gs_format_bytes(gs_host.in_use, in_use),
                      gs_format_bytes(gs_host.peak, peak), gs_format_bytes(gs_host.free_bytes, kept),
                      gs_format_bytes(gs_host.pending_bytes, pending),
                      (unsigned long long)gs_host.driver_allocations,
                      gs_host.driver_allocations == 1 ? "" : "s");
    }
    pthread_mutex_unlock(&gs_host.lock);
}

/* Tests: every block goes back to the driver and every record is freed (single-threaded). */
void gs_host_pool_destroy(void)
{
    for (size_t i = 0; i < HOST_BUCKETS; i++)
        for (host_block_t *b = gs_host.by_ptr[i], *next; b; b = next) {
            next = b->next_by_ptr;
            if (gs_driver()->mem_free_host)
                gs_driver()->mem_free_host(b->ptr);
            free(b);
        }
    gs_host_pool_forget();
}

/* Fork child: pinned memory is inherited as plain memory, and the parent's records are not ours
 * to trust (another thread may have held the lock): drop them (leaked). */
void gs_host_pool_forget(void)
{
    gs_host.free_head = gs_host.pending_head = gs_host.pending_tail = NULL;
    for (size_t i = 0; i < HOST_BUCKETS; i++)
        gs_host.by_ptr[i] = NULL;
    gs_host.free_bytes = gs_host.pending_bytes = gs_host.in_use = gs_host.peak = 0;
    gs_host.allocations = gs_host.reused = gs_host.frees = gs_host.failures = 0;
    gs_host.driver_allocations = gs_host.driver_frees = gs_host.syncs = 0;
    gs_host.no_sync_until = gs_host.backoff_ns = 0;
    pthread_mutex_init(&gs_host.lock, NULL);
    atomic_store(&gs_host_epoch, 1);
    atomic_store(&gs_host_completed, 0);
}
