/* passthrough.c: GPUSHIM_MODE=off. Every call goes to the driver unchanged; the backend only
 * remembers each live block (base, size, device) so that frees can be counted, and charges
 * device memory to GPUSHIM_DEVICE_LIMIT (the program's own managed memory is not charged). */
#include "gs.h"

static inline bool charged(gs_alloc_kind_t kind)
{
    return kind != GS_KIND_MANAGED;
}

static CUresult passthrough_alloc(const gs_alloc_req_t *req, CUdeviceptr *ptr, size_t *pitch,
                                  gs_block_t *block)
{
    const gs_driver_t *drv = gs_driver();
    CUresult rc = CUDA_ERROR_NOT_SUPPORTED;
    uint64_t bytes = req->bytes;
    /* The pitch's bytes are known only once the driver chose the pitch: charged after. */
    if (charged(req->kind) && req->kind != GS_KIND_PITCH && !gs_budget_charge(req->device, bytes))
        return CUDA_ERROR_OUT_OF_MEMORY; /* past GPUSHIM_DEVICE_LIMIT */
    switch (req->kind) {
    case GS_KIND_DEVICE:
        if (drv->mem_alloc)
            rc = GS_DRIVER_CALL(req->device, drv->mem_alloc(ptr, req->bytes));
        break;
    case GS_KIND_PITCH:
        if (drv->mem_alloc_pitch)
            rc = GS_DRIVER_CALL(req->device, drv->mem_alloc_pitch(ptr, pitch, req->width,
                                                                  req->height, req->element_size));
        if (rc == CUDA_SUCCESS)
            bytes = (uint64_t)*pitch * req->height;
        break;
    case GS_KIND_MANAGED:
        if (drv->mem_alloc_managed)
            rc = GS_DRIVER_CALL(req->device,
                                drv->mem_alloc_managed(ptr, req->bytes, req->managed_flags));
        break;
    case GS_KIND_ASYNC:
        if (req->mem_pool) {
            CUresult (*fn)(CUdeviceptr *, size_t, CUmemoryPool, CUstream) =
                req->per_thread_stream ? drv->mem_alloc_from_pool_async_ptsz
                                       : drv->mem_alloc_from_pool_async;
            if (fn)
                rc = GS_DRIVER_CALL(req->device, fn(ptr, req->bytes, req->mem_pool, req->stream));
        } else {
            CUresult (*fn)(CUdeviceptr *, size_t, CUstream) =
                req->per_thread_stream ? drv->mem_alloc_async_ptsz : drv->mem_alloc_async;
            if (fn)
                rc = GS_DRIVER_CALL(req->device, fn(ptr, req->bytes, req->stream));
        }
        break;
    }
    if (rc != CUDA_SUCCESS) {
        if (charged(req->kind) && req->kind != GS_KIND_PITCH)
            gs_budget_uncharge(req->device, bytes);
        return rc;
    }
    if (req->kind == GS_KIND_PITCH && !gs_budget_charge(req->device, bytes)) {
        GS_DRIVER_CALL(req->device, drv->mem_free(*ptr));
        return CUDA_ERROR_OUT_OF_MEMORY; /* past GPUSHIM_DEVICE_LIMIT */
    }
    *block = (gs_block_t){.base = *ptr, .bytes = bytes, .device = req->device, .kind = req->kind};
    /* A zero-byte request may come back as 0 or a pointer the driver reuses: not tracked. */
    gs_block_t stale = {.base = 0};
    if (*ptr != 0 && gs_ptrmap_insert_fresh(block, &stale) != 0)
        gs_log_warning("lost track of a %llu-byte allocation; its free will count as foreign",
                       (unsigned long long)bytes);
    if (stale.base) { /* its context was destroyed */
        gs_stats_free(stale.device, stale.bytes);
        if (charged(stale.kind))
            gs_budget_uncharge(stale.device, stale.bytes);
    }
    return rc;
}

static int passthrough_free(CUdeviceptr ptr, const gs_free_req_t *req, CUresult *result,
                            gs_block_t *block)
{
    const gs_driver_t *drv = gs_driver();
    if (gs_ptrmap_find(ptr, block) != 0)
        return GS_NOT_OURS;
    CUresult (*free_async)(CUdeviceptr, CUstream) =
        req->per_thread_stream ? drv->mem_free_async_ptsz : drv->mem_free_async;
    if (req->stream_ordered)
        *result = free_async ? GS_DRIVER_CALL(block->device, free_async(ptr, req->stream))
                             : CUDA_ERROR_NOT_SUPPORTED;
    else
        *result = drv->mem_free ? GS_DRIVER_CALL(block->device, drv->mem_free(ptr))
                                : CUDA_ERROR_NOT_SUPPORTED;
    /* Only a free the driver accepted ends the block. A racing double free of the same pointer
     * finds it already gone: handled, but nothing more to count. */
    if (*result == CUDA_SUCCESS && gs_ptrmap_remove(ptr, block) != 0)
        block->base = 0;
    else if (*result == CUDA_SUCCESS && charged(block->kind))
        gs_budget_uncharge(block->device, block->bytes);
    return 0;
}

static void passthrough_forget(void)
{
    gs_ptrmap_clear();
}

const gs_backend_t gs_backend_passthrough = {
    .name = "off",
    .alloc = passthrough_alloc,
    .free = passthrough_free,
    .forget = passthrough_forget,
};
