/* dispatch.c: what every intercepted entry point does. The interposition layer forwards here;
 * this file counts, times and hands the work to the backend chosen at start-up. It never asks
 * which backend it has.
 *
 * Semantics kept from CUDA: arguments the driver would reject (NULL out-pointers) go to the
 * driver as they are, so the program gets the driver's own error code; a pointer the backend did
 * not hand out (foreign, double free) goes to the driver; nested calls (the driver calling a
 * symbol we export while we are inside it) go straight to the driver. */
#include "gs.h"
#include "express.h"
#include "stats.h"

#include <pthread.h>

GS_TLS int gs_depth;
GS_TLS uint64_t gs_driver_ticks;

static const gs_backend_t *gs_backend = &gs_backend_passthrough;
static pthread_once_t gs_backend_once = PTHREAD_ONCE_INIT;
static atomic_bool gs_backend_started;

/* 1: the process sees one device, so the current one is 0 without asking the driver (a driver
 * call on every allocation costs more than the whole pool fast path); 0: several; -1: unknown. */
static _Atomic int gs_single_device = -1;

/* Whether the backend's express path (gs_backend_t.express_mem_alloc) runs: it has one and the
 * process sees one device. One flag, set when either changes, so that a call tests one. */
static atomic_bool gs_express;

static void express_update(void)
{
    atomic_store(&gs_express, gs_backend->express_mem_alloc && gs_backend->express_mem_free &&
                                  atomic_load(&gs_single_device) == 1);
}

void gs_dispatch_use(const gs_backend_t *backend)
{
    gs_backend = backend;
    atomic_store(&gs_single_device, -1); /* tests: the next allocation asks the driver again */
    express_update();
}

const gs_backend_t *gs_dispatch_backend(void)
{
    return gs_backend;
}

static void start_backend(void)
{
    gs_signals_install(); /* lifecycle.c: the report and trace survive a scheduler's signal */
    if (gs_backend->start)
        gs_backend->start();
    atomic_store_explicit(&gs_backend_started, true, memory_order_release);
}

int gs_current_device(void)
{
    int single = atomic_load_explicit(&gs_single_device, memory_order_relaxed);
    if (__builtin_expect(single == 1, 1))
        return 0;
    const gs_driver_t *drv = gs_driver();
    if (single < 0) {
        int count = 0;
        if (drv->device_get_count && drv->device_get_count(&count) == CUDA_SUCCESS && count > 0) {
            atomic_store_explicit(&gs_single_device, count == 1, memory_order_relaxed);
            express_update();
            if (count == 1)
                return 0;
        }
    }
    CUdevice device = 0;
    if (drv->ctx_get_device == NULL || drv->ctx_get_device(&device) != CUDA_SUCCESS)
        return 0; /* no context: the call itself will fail; count it on device 0 */
    return (unsigned)device < GS_MAX_DEVICES ? device : 0;
}

bool gs_single_device_process(void)
{
    if (atomic_load_explicit(&gs_single_device, memory_order_relaxed) < 0)
        gs_current_device();
    return atomic_load_explicit(&gs_single_device, memory_order_relaxed) == 1;
}

/* Brackets one counted call: depth for reentrancy, ticks for the time spent in the shim. After a
 * thread's first 64 calls only one call in 32 is timed (express.h says why). */
typedef struct gs_call {
    uint64_t start; /* 0: not timed */
    uint64_t saved_driver_ticks;
} gs_call_t;

GS_TLS uint32_t gs_until_timed = 1;
static GS_TLS uint32_t gs_timed_calls;

uint64_t gs_timing_start(void)
{
    gs_until_timed = ++gs_timed_calls < 64 ? 1 : 32;
    return gs_ticks();
}

static inline gs_call_t call_begin(void)
{
    gs_depth++;
    gs_call_t call = {.start = gs_timing_begin(), .saved_driver_ticks = gs_driver_ticks};
    gs_driver_ticks = 0;
    if (__builtin_expect(!atomic_load_explicit(&gs_backend_started, memory_order_acquire), 0))
        pthread_once(&gs_backend_once, start_backend);
    return call;
}

static inline void call_end(gs_call_t call, int device)
{
    if (call.start)
        gs_stats_time(device, gs_ticks() - call.start - gs_driver_ticks);
    gs_driver_ticks = call.saved_driver_ticks;
    gs_depth--;
}

CUresult gs_pitch_layout(const gs_alloc_req_t *req, uint64_t align, size_t *pitch, uint64_t *bytes)
{
    if (req->width == 0 || req->height == 0 ||
        (req->element_size != 4 && req->element_size != 8 && req->element_size != 16))
        return CUDA_ERROR_INVALID_VALUE;
    /* Sizes no device has: out of memory, as the driver says, before any product can wrap. */
    if (req->width > (1ull << 40) || req->height > (1ull << 40))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *pitch = (req->width + align - 1) / align * align;
    if ((uint64_t)*pitch * req->height / req->height != *pitch ||
        (uint64_t)*pitch * req->height > (1ull << 62))
        return CUDA_ERROR_OUT_OF_MEMORY;
    *bytes = (uint64_t)*pitch * req->height;
    return CUDA_SUCCESS;
}

/* What a request asked for, for failures (a successful one reports its block's bytes). */
static inline uint64_t asked_bytes(const gs_alloc_req_t *req)
{
    return req->kind == GS_KIND_PITCH ? (uint64_t)req->width * req->height : req->bytes;
}

static CUresult allocate(gs_alloc_req_t *req, CUdeviceptr *dptr, size_t *pitch)
{
    gs_call_t call = call_begin();
    req->device = gs_current_device();
    gs_block_t block; /* filled by the backend on success */
    CUresult rc = gs_backend->alloc(req, dptr, pitch, &block);
    if (rc == CUDA_SUCCESS) {
        gs_count_alloc(req->device, block.bytes);
    } else {
        gs_stats_alloc_failed(req->device);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY)
            gs_stats_oom(req->device, asked_bytes(req));
    }
    if (__builtin_expect(gs_tracing, 0))
        gs_trace_record(rc == CUDA_SUCCESS ? GS_TRACE_ALLOCATE : GS_TRACE_ALLOCATE_FAILURE,
                        rc == CUDA_SUCCESS ? *dptr : 0,
                        rc == CUDA_SUCCESS ? block.bytes : asked_bytes(req), req->stream,
                        rc == CUDA_SUCCESS && block.same_thread);
    call_end(call, req->device);
    return rc;
}

__attribute__((noinline)) CUresult gs_mem_alloc_full(CUdeviceptr *dptr, size_t bytes)
{
    if (gs_depth > 0 || dptr == NULL)
        return GS_RAW(mem_alloc, dptr, bytes);
    gs_alloc_req_t req = {.kind = GS_KIND_DEVICE, .bytes = bytes};
    return allocate(&req, dptr, NULL);
}

/* The express path needs no depth bracket: it calls nothing that could come back into the shim.
 */
CUresult gs_mem_alloc(CUdeviceptr *dptr, size_t bytes)
{
    if (atomic_load_explicit(&gs_express, memory_order_relaxed) && gs_depth == 0 && dptr != NULL)
        return gs_backend->express_mem_alloc(dptr, bytes);
    return gs_mem_alloc_full(dptr, bytes);
}

CUresult gs_mem_alloc_pitch(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                            unsigned int element_size)
{
    if (gs_depth > 0 || dptr == NULL || pitch == NULL)
        return GS_RAW(mem_alloc_pitch, dptr, pitch, width, height, element_size);
    gs_alloc_req_t req = {
        .kind = GS_KIND_PITCH, .width = width, .height = height, .element_size = element_size};
    return allocate(&req, dptr, pitch);
}

CUresult gs_mem_alloc_managed(CUdeviceptr *dptr, size_t bytes, unsigned int flags)
{
    if (gs_depth > 0 || dptr == NULL)
        return GS_RAW(mem_alloc_managed, dptr, bytes, flags);
    gs_alloc_req_t req = {.kind = GS_KIND_MANAGED, .bytes = bytes, .managed_flags = flags};
    return allocate(&req, dptr, NULL);
}

CUresult gs_mem_alloc_async(CUdeviceptr *dptr, size_t bytes, CUstream stream, bool per_thread)
{
    if (gs_depth > 0 || dptr == NULL)
        return per_thread ? GS_RAW(mem_alloc_async_ptsz, dptr, bytes, stream)
                          : GS_RAW(mem_alloc_async, dptr, bytes, stream);
    gs_alloc_req_t req = {
        .kind = GS_KIND_ASYNC, .bytes = bytes, .stream = stream, .per_thread_stream = per_thread};
    return allocate(&req, dptr, NULL);
}

/* An explicit memory pool's allocation passes through in every mode (its pool's attributes are
 * the program's), counted and charged to GPUSHIM_DEVICE_LIMIT. */
CUresult gs_mem_alloc_from_pool_async(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                      CUstream stream, bool per_thread)
{
    if (gs_depth > 0 || dptr == NULL || pool == NULL)
        return per_thread ? GS_RAW(mem_alloc_from_pool_async_ptsz, dptr, bytes, pool, stream)
                          : GS_RAW(mem_alloc_from_pool_async, dptr, bytes, pool, stream);
    gs_alloc_req_t req = {.kind = GS_KIND_ASYNC,
                          .bytes = bytes,
                          .stream = stream,
                          .per_thread_stream = per_thread,
                          .mem_pool = pool};
    return allocate(&req, dptr, NULL);
}

/* The program's own cuMemCreate: physical device memory, charged to GPUSHIM_DEVICE_LIMIT until
 * cuMemRelease. Only device memory counts (host and other locations pass untouched). */
static int create_device(const CUmemAllocationProp *prop)
{
    if (prop == NULL || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
        (unsigned)prop->location.id >= GS_MAX_DEVICES)
        return -1;
    return prop->location.id;
}

CUresult gs_mem_create(CUmemGenericAllocationHandle *handle, size_t bytes,
                       const CUmemAllocationProp *prop, unsigned long long flags)
{
    int device = create_device(prop);
    if (gs_depth > 0 || handle == NULL || device < 0 || !gs_budget_set())
        return GS_RAW(mem_create, handle, bytes, prop, flags);
    gs_depth++;
    CUresult rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (gs_budget_charge(device, bytes)) {
        rc = GS_RAW(mem_create, handle, bytes, prop, flags);
        if (rc != CUDA_SUCCESS || gs_budget_handle_add(*handle, device, bytes) != 0)
            gs_budget_uncharge(device, bytes); /* failed, or untracked: not charged */
    } else {
        gs_stats_oom(device, bytes);
    }
    gs_depth--;
    return rc;
}

CUresult gs_mem_release(CUmemGenericAllocationHandle handle)
{
    CUresult rc = GS_RAW(mem_release, handle);
    int device;
    uint64_t bytes;
    if (rc == CUDA_SUCCESS && gs_budget_set() && gs_budget_handle_remove(handle, &device, &bytes) == 0)
        gs_budget_uncharge(device, bytes);
    return rc;
}

static CUresult driver_free(const gs_free_req_t *req, CUdeviceptr ptr)
{
    if (!req->stream_ordered)
        return GS_RAW(mem_free, ptr);
    return req->per_thread_stream ? GS_RAW(mem_free_async_ptsz, ptr, req->stream)
                                  : GS_RAW(mem_free_async, ptr, req->stream);
}

static CUresult release(CUdeviceptr ptr, const gs_free_req_t *req)
{
    if (gs_depth > 0 || ptr == 0) /* freeing 0: whatever the driver says (success) */
        return driver_free(req, ptr);
    gs_call_t call = call_begin();
    CUresult result = CUDA_SUCCESS;
    gs_block_t block; /* filled by the backend unless GS_NOT_OURS */
    int device;
    if (gs_backend->free(ptr, req, &result, &block) == GS_NOT_OURS) {
        /* Not ours: allocated before we were loaded, by an API we pass through (explicit pools,
         * cuMemCreate), or not at all (double free): the driver decides. */
        device = gs_current_device();
        result = GS_DRIVER_CALL(device, driver_free(req, ptr));
        gs_stats_foreign_free(device);
    } else {
        device = block.device;
        if (result == CUDA_SUCCESS && block.base != 0) {
            gs_count_free(device, block.bytes);
            if (__builtin_expect(gs_tracing, 0))
                gs_trace_record(GS_TRACE_FREE, ptr, block.bytes, req->stream, block.same_thread);
        }
    }
    call_end(call, device);
    return result;
}

__attribute__((noinline)) CUresult gs_mem_free_full(CUdeviceptr ptr)
{
    gs_free_req_t req = {.stream_ordered = false};
    return release(ptr, &req);
}

CUresult gs_mem_free(CUdeviceptr ptr)
{
    if (atomic_load_explicit(&gs_express, memory_order_relaxed) && gs_depth == 0 && ptr != 0)
        return gs_backend->express_mem_free(ptr);
    return gs_mem_free_full(ptr);
}

CUresult gs_mem_free_async(CUdeviceptr ptr, CUstream stream, bool per_thread)
{
    gs_free_req_t req = {.stream_ordered = true, .stream = stream, .per_thread_stream = per_thread};
    return release(ptr, &req);
}

/* The queries below change nothing: the backend may answer for its own blocks, the driver
 * answers the rest. They are not counted. */

/* Under GPUSHIM_DEVICE_LIMIT the total is the limit and free what it leaves, as with HAMi-core. */
CUresult gs_mem_get_info(size_t *free_bytes, size_t *total_bytes)
{
    if (gs_depth > 0 || free_bytes == NULL || total_bytes == NULL)
        return GS_RAW(mem_get_info, free_bytes, total_bytes);
    CUresult rc;
    gs_depth++;
    if (gs_backend->mem_get_info == NULL ||
        gs_backend->mem_get_info(free_bytes, total_bytes, &rc) != 0)
        rc = GS_RAW(mem_get_info, free_bytes, total_bytes);
    if (rc == CUDA_SUCCESS && gs_budget_set()) {
        int device = gs_current_device();
        gs_budget_mem_info(device, free_bytes, total_bytes,
                           gs_backend->idle_bytes ? gs_backend->idle_bytes(device) : 0);
    }
    gs_depth--;
    return rc;
}

CUresult gs_mem_get_address_range(CUdeviceptr *base, size_t *size, CUdeviceptr ptr)
{
    CUresult rc;
    if (gs_depth == 0 && gs_backend->address_range &&
        gs_backend->address_range(ptr, base, size, &rc) == 0)
        return rc;
    rc = GS_RAW(mem_get_address_range, base, size, ptr);
    if (rc == CUDA_SUCCESS && gs_depth == 0)
        gs_host_pool_range(ptr, base, size); /* a pooled pinned block: the program's size */
    return rc;
}

/* A pooled pinned block's range attributes say what the program asked for. */
static int host_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    if (attr == CU_POINTER_ATTRIBUTE_RANGE_START_ADDR)
        return gs_host_pool_range(ptr, data, NULL);
    if (attr == CU_POINTER_ATTRIBUTE_RANGE_SIZE)
        return gs_host_pool_range(ptr, NULL, data);
    return GS_NOT_OURS;
}

static int backend_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr,
                             CUresult *result)
{
    if (gs_backend->pointer_attribute && gs_backend->pointer_attribute(data, attr, ptr, result) == 0)
        return 0;
    *result = CUDA_SUCCESS;
    return host_attribute(data, attr, ptr);
}

CUresult gs_pointer_get_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    CUresult rc = GS_RAW(pointer_get_attribute, data, attr, ptr);
    CUresult ours;
    if (rc == CUDA_SUCCESS && gs_depth == 0 && backend_attribute(data, attr, ptr, &ours) == 0)
        return ours;
    return rc;
}

CUresult gs_pointer_get_attributes(unsigned int count, CUpointer_attribute *attrs, void **data,
                                   CUdeviceptr ptr)
{
    CUresult rc = GS_RAW(pointer_get_attributes, count, attrs, data, ptr);
    if (rc != CUDA_SUCCESS || gs_depth > 0)
        return rc;
    for (unsigned int i = 0; i < count; i++) {
        CUresult ours;
        if (data[i] && backend_attribute(data[i], attrs[i], ptr, &ours) == 0 &&
            ours != CUDA_SUCCESS)
            return ours;
    }
    return rc;
}

CUresult gs_ipc_get_mem_handle(CUipcMemHandle *handle, CUdeviceptr ptr)
{
    CUresult rc;
    if (gs_depth == 0 && gs_backend->ipc_handle && gs_backend->ipc_handle(handle, ptr, &rc) == 0)
        return rc;
    return GS_RAW(ipc_get_mem_handle, handle, ptr);
}

static CUresult synchronize(int device, CUresult (*sync)(void *), void *arg)
{
    gs_depth++;
    uint64_t token = gs_backend->before_sync ? gs_backend->before_sync(device) : 0;
    uint64_t host_token = gs_host_pool_before_sync();
    CUresult rc = GS_DRIVER_CALL(device, sync(arg));
    if (rc == CUDA_SUCCESS && gs_backend->after_sync)
        gs_backend->after_sync(device, token);
    if (rc == CUDA_SUCCESS)
        gs_host_pool_after_sync(host_token);
    gs_depth--;
    return rc;
}

static CUresult sync_current(void *arg)
{
    (void)arg;
    return GS_RAW(ctx_synchronize);
}

static CUresult sync_context(void *ctx)
{
    return GS_RAW(ctx_synchronize_v2, (CUcontext)ctx);
}

CUresult gs_ctx_synchronize(void)
{
    if (gs_depth > 0)
        return GS_RAW(ctx_synchronize);
    return synchronize(gs_current_device(), sync_current, NULL);
}

CUresult gs_ctx_synchronize_v2(CUcontext ctx)
{
    const gs_driver_t *drv = gs_driver();
    CUdevice device = 0;
    if (gs_depth > 0)
        return GS_RAW(ctx_synchronize_v2, ctx);
    if (ctx == NULL)
        device = gs_current_device();
    else if (drv->ctx_get_device_v2 == NULL ||
             drv->ctx_get_device_v2(&device, ctx) != CUDA_SUCCESS ||
             (unsigned)device >= GS_MAX_DEVICES)
        return GS_RAW(ctx_synchronize_v2, ctx); /* unknown context: nothing of ours to release */
    return synchronize(device, sync_context, ctx);
}

/* The context holding a device's memory reset or destroyed: cudaDeviceReset
 * (cuDevicePrimaryCtxReset), the last cuDevicePrimaryCtxRelease, or cuCtxDestroy of a context the
 * program made, frees every allocation the context held. A pool that kept
 * its chunks would hand out memory the driver freed (and may give to someone else), and the
 * program's own allocations are gone too; so once the driver has done it, the shim forgets them:
 * they count as freed, and the backend starts the device afresh. As with CUDA, the program must
 * not use the device from another thread meanwhile. */
typedef struct released {
    const gs_backend_t *backend;
    uint64_t count, bytes;
} released_t;

static void count_released(void *ctx, const gs_block_t *block)
{
    released_t *r = ctx;
    uint64_t live = r->backend->live_bytes ? r->backend->live_bytes(block) : block->bytes;
    if (live == 0)
        return; /* a pool block not handed out */
    r->count++;
    r->bytes += live;
    gs_count_free(block->device, live);
    if (block->owner == NULL && block->kind != GS_KIND_MANAGED) /* passed through */
        gs_budget_uncharge(block->device, block->bytes);
    if (__builtin_expect(gs_tracing, 0))
        gs_trace_record(GS_TRACE_FREE, block->base, live, NULL, false);
}

static void forget_device(CUdevice device)
{
    released_t released = {.backend = gs_backend};
    gs_ptrmap_drop_device(device, count_released, &released);
    if (gs_backend->device_reset)
        gs_backend->device_reset(device); /* before the streams go: it may drop their slots */
    gs_streams_forget_device(device);
    gs_stats_context_reset(device, released.count, released.bytes);
}

CUresult gs_primary_ctx_reset(CUdevice device, bool v2)
{
    CUresult rc = v2 ? GS_RAW(primary_ctx_reset_v2, device) : GS_RAW(primary_ctx_reset, device);
    if (rc == CUDA_SUCCESS && gs_depth == 0 && (unsigned)device < GS_MAX_DEVICES)
        forget_device(device);
    return rc;
}

/* A context the program made itself: the backend knows whether all it holds on a device came
 * from it (the pool records each chunk's context). */
CUresult gs_ctx_destroy(CUcontext ctx, bool v2)
{
    CUresult rc = v2 ? GS_RAW(ctx_destroy_v2, ctx) : GS_RAW(ctx_destroy, ctx);
    int device;
    if (rc == CUDA_SUCCESS && gs_depth == 0 && gs_backend->context_destroyed &&
        (device = gs_backend->context_destroyed(ctx)) >= 0 && device < GS_MAX_DEVICES)
        forget_device(device);
    return rc;
}

CUresult gs_primary_ctx_release(CUdevice device, bool v2)
{
    const gs_driver_t *drv = gs_driver();
    CUresult rc = v2 ? GS_RAW(primary_ctx_release_v2, device) : GS_RAW(primary_ctx_release, device);
    unsigned int flags = 0;
    int active = 1;
    if (rc == CUDA_SUCCESS && gs_depth == 0 && (unsigned)device < GS_MAX_DEVICES &&
        drv->primary_ctx_get_state && drv->primary_ctx_get_state(device, &flags, &active) == 0 &&
        !active)
        forget_device(device); /* that was the last reference: the context is gone */
    return rc;
}
