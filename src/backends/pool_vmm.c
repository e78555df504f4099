/* pool_vmm.c: the large heap's expandable range (GPUSHIM_POOL_EXPANDABLE=auto). With separate
 * chunks, every growth adds a boundary that no block can span, and each chunk's end is wasted
 * unless a block fits it exactly; growing one range in place removes both (on the random pattern
 * of the test driver, 1.17x -> 1.13x peak reserved over peak in use). The physical memory comes
 * in pieces, one cuMemCreate each, mapped at the end of the range and given read-write
 * access for this device and every peer that can reach it (cuMemAlloc memory is reachable by
 * peers once they enable peer access; mapped memory only where access was set). Device lock held
 * throughout. */
#include "gs.h"
#include "pool_internal.h"

#include <stdlib.h>

static CUmemAllocationProp device_memory(int device)
{
    return (CUmemAllocationProp){.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                 .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device}};
}

void gs_pool_vmm_init(gs_pool_device_t *p, int device)
{
    const gs_driver_t *drv = gs_driver();
    gs_pool_vmm_t *v = &p->vmm;
    int supported = 0;
    size_t granularity = 0;
    CUmemAllocationProp prop = device_memory(device);
    if (gs_opts.pool_expandable == GS_EXPANDABLE_OFF) {
        v->off = "GPUSHIM_POOL_EXPANDABLE=off";
        return;
    }
    if (!drv->mem_address_reserve || !drv->mem_create || !drv->mem_release || !drv->mem_map ||
        !drv->mem_unmap || !drv->mem_set_access || !drv->mem_get_allocation_granularity ||
        !drv->device_get_attribute ||
        drv->device_get_attribute(&supported,
                                  CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                  device) != CUDA_SUCCESS ||
        !supported) {
        v->off = "the driver or device has no virtual memory management";
        return;
    }
    if (drv->mem_get_allocation_granularity(&granularity, &prop,
                                            CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) != CUDA_SUCCESS ||
        granularity == 0) {
        v->off = "the driver gave no allocation granularity";
        return;
    }
    if (p->total == 0 || p->max > p->total) {
        v->off = "the device's memory size is unknown";
        return;
    }
    /* Addresses for all the pool may reserve: they cost no memory. */
    uint64_t range = round_up(p->max, granularity);
    CUdeviceptr base = 0;
    if (GS_DRIVER_CALL(device, drv->mem_address_reserve(&base, range, 0, 0, 0)) != CUDA_SUCCESS) {
        v->off = "the driver refused to reserve the virtual range";
        return;
    }
    v->access[0] =
        (CUmemAccessDesc){.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device},
                          .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    v->access_count = 1;
    int count = 0;
    if (drv->device_get_count && drv->device_can_access_peer &&
        drv->device_get_count(&count) == CUDA_SUCCESS) {
        for (int peer = 0; peer < count && peer < GS_MAX_DEVICES; peer++) {
            int can = 0;
            if (peer != device && drv->device_can_access_peer(&can, peer, device) == CUDA_SUCCESS &&
                can) {
                v->access[v->access_count] = v->access[0];
                v->access[v->access_count++].location.id = peer;
            }
        }
    }
    v->base = base;
    v->range = range;
    v->granularity = granularity;
}

CUresult gs_pool_vmm_map(gs_pool_device_t *p, int device, uint64_t bytes)
{
    const gs_driver_t *drv = gs_driver();
    gs_pool_vmm_t *v = &p->vmm;
    if (v->mapped + bytes > v->range)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (v->count == v->capacity) {
        unsigned capacity = v->capacity ? v->capacity * 2 : 64;
        uint64_t *pieces = realloc(v->pieces, capacity * sizeof *pieces);
        if (pieces == NULL)
            return CUDA_ERROR_OUT_OF_MEMORY;
        v->pieces = pieces;
        v->capacity = capacity;
    }
    CUmemAllocationProp prop = device_memory(device);
    CUmemGenericAllocationHandle handle;
    CUdeviceptr at = v->base + v->mapped;
    if (!gs_budget_charge(device, bytes))
        return CUDA_ERROR_OUT_OF_MEMORY; /* past GPUSHIM_DEVICE_LIMIT */
    CUresult rc = GS_DRIVER_CALL(device, drv->mem_create(&handle, bytes, &prop, 0));
    if (rc != CUDA_SUCCESS) {
        gs_budget_uncharge(device, bytes);
        return rc;
    }
    rc = GS_DRIVER_CALL(device, drv->mem_map(at, bytes, 0, handle, 0));
    if (rc == CUDA_SUCCESS) {
        rc = GS_DRIVER_CALL(device, drv->mem_set_access(at, bytes, v->access, v->access_count));
        if (rc != CUDA_SUCCESS)
            drv->mem_unmap(at, bytes);
    }
    /* The mapping keeps the memory: unmapping it frees it. */
    drv->mem_release(handle);
    if (rc != CUDA_SUCCESS) {
        gs_budget_uncharge(device, bytes);
        return rc;
    }
    v->pieces[v->count++] = bytes;
    v->mapped += bytes;
    return CUDA_SUCCESS;
}

uint64_t gs_pool_vmm_unmap_from(gs_pool_device_t *p, int device, uint64_t from, uint64_t unmap_max)
{
    const gs_driver_t *drv = gs_driver();
    gs_pool_vmm_t *v = &p->vmm;
    uint64_t unmapped = 0;
    bool synchronized = false;
    while (v->count > 0 && unmapped < unmap_max) {
        uint64_t size = v->pieces[v->count - 1], start = v->mapped - size;
        if (start < from)
            break;
        /* Under immediate reuse, work queued before a block's free may still use it: wait for the
         * device first, as cuMemFree does. */
        if (!synchronized && drv->ctx_synchronize)
            GS_DRIVER_CALL(device, drv->ctx_synchronize());
        synchronized = true;
        if (GS_DRIVER_CALL(device, drv->mem_unmap(v->base + start, size)) != CUDA_SUCCESS)
            break;
        v->mapped = start;
        unmapped += size;
        v->count--;
        gs_budget_uncharge(device, size);
    }
    return unmapped;
}

void gs_pool_vmm_unmap_all(gs_pool_device_t *p)
{
    const gs_driver_t *drv = gs_driver();
    gs_pool_vmm_t *v = &p->vmm;
    /* Best effort: a reset may have taken the mappings along already. */
    for (uint64_t end = v->mapped; v->count > 0; v->count--) {
        end -= v->pieces[v->count - 1];
        drv->mem_unmap(v->base + end, v->pieces[v->count - 1]);
    }
    gs_budget_uncharge((int)(p - gs_pools), v->mapped);
    v->mapped = 0;
    v->chunk = NULL;
}
