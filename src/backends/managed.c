/* managed.c: GPUSHIM_MODE=managed, and the spill target of GPUSHIM_ON_OOM=managed in pool mode.
 *
 * Every device allocation (cuMemAlloc, cuMemAllocPitch, cuMemAllocAsync) becomes CUDA managed
 * memory (cuMemAllocManaged, global attach), so data larger than the GPU spills to host RAM
 * instead of failing. Options: prefetch to the allocating device at allocation, advice, and a
 * per-device cap beyond which allocations fail with CUDA's out-of-memory error.
 *
 * Stream-ordered frees stay stream ordered without blocking the caller: cuMemFree on managed
 * memory would wait for the device, so cuMemFreeAsync records an event on the stream and the
 * memory is released once the event has completed (checked at later calls and synchronizations).
 * Explicit pools and the virtual-memory API are not intercepted and pass through. */
#include "gs.h"

#include <pthread.h>
#include <stdlib.h>

const char gs_managed_owner[] = "managed";

#define PITCH_ALIGN 512ull

typedef struct deferred_free {
    CUdeviceptr ptr;
    CUevent event;
    uint64_t bytes;
    int device;
    struct deferred_free *next;
} deferred_free_t;

static struct {
    _Atomic int64_t bytes, peak;
    _Atomic uint64_t prefetches, spilled, spilled_bytes, refused;
    _Atomic uint64_t limit; /* resolved at first use; 0: none */
    atomic_bool limit_ready;
} gs_managed[GS_MAX_DEVICES];

static deferred_free_t *gs_deferred;
static _Atomic int gs_deferred_count;
static pthread_mutex_t gs_deferred_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t limit_of(int device)
{
    if (!atomic_load_explicit(&gs_managed[device].limit_ready, memory_order_acquire)) {
        const gs_driver_t *drv = gs_driver();
        size_t total = 0;
        if (drv->device_total_mem)
            drv->device_total_mem(&total, device);
        atomic_store(&gs_managed[device].limit, gs_size_resolve(gs_opts.managed_limit, total));
        atomic_store_explicit(&gs_managed[device].limit_ready, true, memory_order_release);
    }
    return atomic_load_explicit(&gs_managed[device].limit, memory_order_relaxed);
}

static void account(int device, int64_t delta)
{
    int64_t now = atomic_fetch_add(&gs_managed[device].bytes, delta) + delta;
    int64_t peak = atomic_load(&gs_managed[device].peak);
    while (now > peak && !atomic_compare_exchange_weak(&gs_managed[device].peak, &peak, now)) {
    }
}

/* Releases the deferred frees whose stream work is done. */
static void reap(void)
{
    if (atomic_load_explicit(&gs_deferred_count, memory_order_relaxed) == 0 || gs_capturing())
        return; /* cuMemFree waits for the device: not while a stream is capturing */
    const gs_driver_t *drv = gs_driver();
    pthread_mutex_lock(&gs_deferred_lock);
    for (deferred_free_t **link = &gs_deferred; *link;) {
        deferred_free_t *d = *link;
        if (drv->event_query(d->event) != CUDA_SUCCESS) { /* CUDA_ERROR_NOT_READY: still queued */
            link = &d->next;
            continue;
        }
        drv->event_destroy(d->event);
        if (GS_DRIVER_CALL(d->device, drv->mem_free(d->ptr)) == CUDA_SUCCESS)
            account(d->device, -(int64_t)d->bytes);
        *link = d->next;
        atomic_fetch_sub(&gs_deferred_count, 1);
        free(d);
    }
    pthread_mutex_unlock(&gs_deferred_lock);
}

static CUstream stream_of(CUstream stream, bool per_thread)
{
    return stream == NULL && per_thread ? CU_STREAM_PER_THREAD : stream;
}

static CUresult managed_alloc(const gs_alloc_req_t *req, CUdeviceptr *ptr, size_t *pitch,
                              gs_block_t *block)
{
    const gs_driver_t *drv = gs_driver();
    uint64_t bytes = req->bytes;
    if (req->kind == GS_KIND_PITCH && gs_pitch_layout(req, PITCH_ALIGN, pitch, &bytes))
        return CUDA_ERROR_INVALID_VALUE;
    if (bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (drv->mem_alloc_managed == NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    reap();
    int device = req->device;
    uint64_t limit = limit_of(device);
    int64_t after = atomic_fetch_add(&gs_managed[device].bytes, (int64_t)bytes) + (int64_t)bytes;
    if (limit && (uint64_t)after > limit) {
        atomic_fetch_sub(&gs_managed[device].bytes, (int64_t)bytes);
        atomic_fetch_add(&gs_managed[device].refused, 1);
        return CUDA_ERROR_OUT_OF_MEMORY; /* past GPUSHIM_MANAGED_LIMIT */
    }
    unsigned int flags = req->kind == GS_KIND_MANAGED ? req->managed_flags : CU_MEM_ATTACH_GLOBAL;
    CUresult rc = GS_DRIVER_CALL(device, drv->mem_alloc_managed(ptr, bytes, flags));
    if (rc != CUDA_SUCCESS) {
        atomic_fetch_sub(&gs_managed[device].bytes, (int64_t)bytes);
        return rc;
    }
    account(device, 0); /* the bytes are in; update the peak */
    CUmemLocation here = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device};
    if (gs_opts.managed_advice != GS_ADVICE_NONE && drv->mem_advise)
        GS_DRIVER_CALL(device, drv->mem_advise(*ptr, bytes,
                                               gs_opts.managed_advice == GS_ADVICE_PREFERRED
                                                   ? CU_MEM_ADVISE_SET_PREFERRED_LOCATION
                                                   : CU_MEM_ADVISE_SET_ACCESSED_BY,
                                               here));
    /* Not while a stream is capturing: on the legacy stream the prefetch would invalidate the
     * capture, on the program's stream it would become part of the graph. */
    if (gs_opts.managed_prefetch && drv->mem_prefetch_async && !gs_capturing()) {
        CUstream stream =
            req->kind == GS_KIND_ASYNC ? stream_of(req->stream, req->per_thread_stream) : NULL;
        if (GS_DRIVER_CALL(device, drv->mem_prefetch_async(*ptr, bytes, here, 0, stream)) ==
            CUDA_SUCCESS)
            atomic_fetch_add(&gs_managed[device].prefetches, 1);
    }
    *block = (gs_block_t){.base = *ptr,
                          .bytes = bytes,
                          .device = device,
                          .kind = req->kind,
                          .owner = (void *)gs_managed_owner};
    gs_block_t stale;
    if (gs_ptrmap_insert_fresh(block, &stale) != 0)
        gs_log_warning("lost track of a %llu-byte managed allocation; its free will count as "
                       "foreign",
                       (unsigned long long)bytes);
    if (stale.base) { /* its context was destroyed */
        gs_stats_free(stale.device, stale.bytes);
        if (stale.owner == gs_managed_owner)
            account(stale.device, -(int64_t)stale.bytes);
    }
    return CUDA_SUCCESS;
}

static int managed_free(CUdeviceptr ptr, const gs_free_req_t *req, CUresult *result,
                        gs_block_t *block)
{
    const gs_driver_t *drv = gs_driver();
    if (gs_ptrmap_find(ptr, block) != 0 || block->owner != gs_managed_owner)
        return GS_NOT_OURS;
    reap();
    if (req->stream_ordered && drv->event_create && drv->event_record) {
        deferred_free_t *d = calloc(1, sizeof *d);
        CUstream stream = stream_of(req->stream, req->per_thread_stream);
        if (d && drv->event_create(&d->event, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS) {
            *result = drv->event_record(d->event, stream);
            if (*result != CUDA_SUCCESS) { /* a bad stream: the driver's answer, nothing freed */
                drv->event_destroy(d->event);
                free(d);
                block->base = 0;
                return 0;
            }
            d->ptr = ptr;
            d->bytes = block->bytes;
            d->device = block->device;
            gs_ptrmap_remove(ptr, NULL);
            pthread_mutex_lock(&gs_deferred_lock);
            d->next = gs_deferred;
            gs_deferred = d;
            atomic_fetch_add(&gs_deferred_count, 1);
            pthread_mutex_unlock(&gs_deferred_lock);
            return 0;
        }
        free(d); /* no event: fall back to a synchronous free */
    }
    *result = GS_DRIVER_CALL(block->device, drv->mem_free(ptr));
    if (*result == CUDA_SUCCESS && gs_ptrmap_remove(ptr, block) == 0)
        account(block->device, -(int64_t)block->bytes);
    else if (*result == CUDA_SUCCESS)
        block->base = 0;
    return 0;
}

CUresult gs_managed_spill(const gs_alloc_req_t *req, CUdeviceptr *ptr, size_t *pitch,
                          gs_block_t *block)
{
    CUresult rc = managed_alloc(req, ptr, pitch, block);
    if (rc == CUDA_SUCCESS) {
        atomic_fetch_add(&gs_managed[req->device].spilled, 1);
        atomic_fetch_add(&gs_managed[req->device].spilled_bytes, block->bytes);
    }
    return rc;
}

/* With a cap, frameworks that size themselves from free memory see what the shim will give:
 * total = the cap, free = the cap less this process's managed bytes. Without one, the driver's
 * numbers (managed memory can exceed them; the report says how far it went). */
static int managed_mem_get_info(size_t *free_bytes, size_t *total_bytes, CUresult *result)
{
    int device = gs_current_device();
    uint64_t limit = limit_of(device);
    if (limit == 0)
        return GS_NOT_OURS;
    int64_t used = atomic_load(&gs_managed[device].bytes);
    *total_bytes = limit;
    *free_bytes = (uint64_t)used < limit ? limit - (uint64_t)used : 0;
    *result = CUDA_SUCCESS;
    return 0;
}

/* CUDA IPC refuses managed memory. The program gets the driver's answer; the user gets the cause.
 */
static int managed_ipc_handle(CUipcMemHandle *handle, CUdeviceptr ptr, CUresult *result)
{
    const gs_driver_t *drv = gs_driver();
    *result =
        drv->ipc_get_mem_handle ? drv->ipc_get_mem_handle(handle, ptr) : CUDA_ERROR_NOT_SUPPORTED;
    if (*result != CUDA_SUCCESS)
        gs_log_warning("cuIpcGetMemHandle failed (error %d): CUDA IPC cannot share managed memory, "
                       "and GPUSHIM_MODE=managed makes every allocation managed; run the "
                       "exporting process with GPUSHIM_MODE=off or pool",
                       (int)*result);
    return 0;
}

static void managed_after_sync(int device, uint64_t token)
{
    (void)device;
    (void)token;
    reap();
}

static void managed_report(int device, gs_buf_t *out, bool json)
{
    int64_t bytes = atomic_load(&gs_managed[device].bytes),
            peak = atomic_load(&gs_managed[device].peak);
    uint64_t spilled = atomic_load(&gs_managed[device].spilled);
    uint64_t spilled_bytes = atomic_load(&gs_managed[device].spilled_bytes);
    uint64_t prefetches = atomic_load(&gs_managed[device].prefetches);
    uint64_t refused = atomic_load(&gs_managed[device].refused);
    uint64_t limit = atomic_load(&gs_managed[device].limit);
    if (peak == 0 && spilled == 0 && refused == 0)
        return;
    if (json) {
        gs_buf_printf(
            out,
            ",\n      \"managed\": {\"bytes\": %lld, \"peak\": %lld, \"prefetches\": %llu, "
            "\"cap\": %llu, \"refused_at_cap\": %llu, \"deferred_frees\": %d, "
            "\"spilled_allocations\": %llu, \"spilled_bytes\": %llu}",
            (long long)bytes, (long long)peak, (unsigned long long)prefetches,
            (unsigned long long)limit, (unsigned long long)refused, atomic_load(&gs_deferred_count),
            (unsigned long long)spilled, (unsigned long long)spilled_bytes);
        return;
    }
    char now_text[32], peak_text[32], limit_text[32], spilled_text[32];
    gs_buf_printf(out,
                  "gpushim: device %d: managed memory %s now, peak %s; %llu prefetches; cap %s, "
                  "%llu allocations refused at the cap; %d stream-ordered frees still waiting\n",
                  device, gs_format_bytes((uint64_t)(bytes > 0 ? bytes : 0), now_text),
                  gs_format_bytes((uint64_t)peak, peak_text), (unsigned long long)prefetches,
                  limit ? gs_format_bytes(limit, limit_text) : "none", (unsigned long long)refused,
                  atomic_load(&gs_deferred_count));
    if (spilled)
        gs_buf_printf(out, "gpushim: device %d: spilled to managed memory: %llu allocations, %s\n",
                      device, (unsigned long long)spilled,
                      gs_format_bytes(spilled_bytes, spilled_text));
}

/* The device's context was reset: its managed memory is gone (gs_ptrmap no longer lists the
 * live blocks), and so are the events of its deferred frees: drop them without a driver call. */
static void managed_device_reset(int device)
{
    pthread_mutex_lock(&gs_deferred_lock);
    for (deferred_free_t **link = &gs_deferred; *link;) {
        deferred_free_t *d = *link;
        if (d->device != device) {
            link = &d->next;
            continue;
        }
        *link = d->next;
        atomic_fetch_sub(&gs_deferred_count, 1);
        free(d);
    }
    pthread_mutex_unlock(&gs_deferred_lock);
    atomic_store(&gs_managed[device].bytes, 0);
}

/* Fork child: the parent's memory and events are not the child's. */
static void managed_forget(void)
{
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        atomic_store(&gs_managed[d].bytes, 0);
        atomic_store(&gs_managed[d].peak, 0);
        atomic_store(&gs_managed[d].prefetches, 0);
        atomic_store(&gs_managed[d].spilled, 0);
        atomic_store(&gs_managed[d].spilled_bytes, 0);
        atomic_store(&gs_managed[d].refused, 0);
    }
    gs_deferred = NULL; /* leaked on purpose: another thread may have held the lock */
    atomic_store(&gs_deferred_count, 0);
    pthread_mutex_init(&gs_deferred_lock, NULL);
    gs_ptrmap_clear();
}

const gs_backend_t gs_backend_managed = {
    .name = "managed",
    .alloc = managed_alloc,
    .free = managed_free,
    .mem_get_info = managed_mem_get_info,
    .ipc_handle = managed_ipc_handle,
    .after_sync = managed_after_sync,
    .report = managed_report,
    .device_reset = managed_device_reset,
    .forget = managed_forget,
};
