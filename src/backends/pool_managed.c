/* pool_managed.c: where the pool's chunks come from. Device memory (cuMemAlloc) in pool mode;
 * managed memory (cuMemAllocManaged) in managed mode and for the spill heap of
 * GPUSHIM_ON_OOM=managed.
 *
 * Managed mode is the pool over managed memory: the same size classes, thread caches, safe reuse
 * and express path, so a repeated temporary costs no new cuMemAllocManaged, no prefetch and no
 * page population: a reused block stays resident where it was. Each chunk is placed once, when
 * the shim takes it: the part within GPUSHIM_DEVICE_LIMIT is preferred on the device
 * (GPUSHIM_MANAGED_ADVICE, prefetched with GPUSHIM_MANAGED_PREFETCH), the part past it in host
 * memory (preferred location the CPU, accessed by the device), so a program runs as it would on
 * a GPU of the budget's size. What the pool keeps counts against GPUSHIM_MANAGED_LIMIT and goes
 * back to the driver when an allocation would pass it, when the driver refuses a new chunk (the
 * host is short of memory), and at synchronizations past GPUSHIM_POOL_RELEASE_THRESHOLD. */
#include "gs.h"
#include "pool_internal.h"

static void advise(int device, CUdeviceptr at, uint64_t bytes, CUmem_advise advice,
                   CUmemLocation where)
{
    const gs_driver_t *drv = gs_driver();
    if (bytes && drv->mem_advise)
        GS_DRIVER_CALL(device, drv->mem_advise(at, bytes, advice, where));
}

/* A new chunk of managed memory at *base, placed within GPUSHIM_DEVICE_LIMIT or past it
 * (c->on_device, c->on_host), advised and prefetched. */
static CUresult managed_take(gs_pool_device_t *p, int device, gs_pool_chunk_t *c, CUdeviceptr *base,
                             uint64_t size)
{
    const gs_driver_t *drv = gs_driver();
    if (drv->mem_alloc_managed == NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult rc = GS_DRIVER_CALL(device, drv->mem_alloc_managed(base, size, CU_MEM_ATTACH_GLOBAL));
    if (rc != CUDA_SUCCESS)
        return rc;
    c->managed = true;
    c->on_device = gs_budget_place(device, size);
    c->on_host = size - c->on_device;
    CUmemLocation here = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device};
    CUmemLocation host = {.type = CU_MEM_LOCATION_TYPE_HOST, .id = 0};
    if (gs_opts.managed_advice != GS_ADVICE_NONE)
        advise(device, *base, c->on_device,
               gs_opts.managed_advice == GS_ADVICE_PREFERRED ? CU_MEM_ADVISE_SET_PREFERRED_LOCATION
                                                             : CU_MEM_ADVISE_SET_ACCESSED_BY,
               here);
    /* Past the budget: in host memory, read and written by the device over the bus. */
    advise(device, *base + c->on_device, c->on_host, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, host);
    advise(device, *base + c->on_device, c->on_host, CU_MEM_ADVISE_SET_ACCESSED_BY, here);
    /* Not while a stream is capturing: on the legacy stream the prefetch would invalidate the
     * capture. */
    if (gs_opts.managed_prefetch && c->on_device && drv->mem_prefetch_async && !gs_capturing() &&
        GS_DRIVER_CALL(device, drv->mem_prefetch_async(*base, c->on_device, here, 0, NULL)) ==
            CUDA_SUCCESS)
        p->prefetches++;
    return CUDA_SUCCESS;
}

CUresult gs_pool_chunk_take(gs_pool_device_t *p, int device, gs_pool_chunk_t *c, CUdeviceptr *base,
                            uint64_t size)
{
    const gs_driver_t *drv = gs_driver();
    if (p->managed || c->heap == HEAP_SPILL)
        return managed_take(p, device, c, base, size);
    if (drv->mem_alloc == NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (!gs_budget_charge(device, size))
        return CUDA_ERROR_OUT_OF_MEMORY; /* past GPUSHIM_DEVICE_LIMIT */
    CUresult rc = GS_DRIVER_CALL(device, drv->mem_alloc(base, size));
    if (rc != CUDA_SUCCESS)
        gs_budget_uncharge(device, size);
    return rc;
}

void gs_pool_chunk_forget(int device, gs_pool_chunk_t *c)
{
    if (c->expandable)
        return; /* the range's mappings are uncharged as they are unmapped (pool_vmm.c) */
    if (c->managed)
        gs_budget_unplace(device, c->on_device, c->on_host);
    else
        gs_budget_uncharge(device, c->size);
}

CUresult gs_pool_chunk_give_back(int device, gs_pool_chunk_t *c)
{
    const gs_driver_t *drv = gs_driver();
    CUresult rc = GS_DRIVER_CALL(device, drv->mem_free(c->base));
    if (rc == CUDA_SUCCESS)
        gs_pool_chunk_forget(device, c);
    return rc;
}

void gs_pool_managed_report(gs_pool_device_t *p, int device, gs_buf_t *out, bool json)
{
    uint64_t spill_reserved = p->heaps[HEAP_SPILL].reserved;
    if (!p->managed && p->both_peak_spilled == 0 && p->spilled_allocations == 0)
        return;
    uint64_t cap = p->managed ? p->max : p->spill_max;
    if (cap == UINT64_MAX)
        cap = 0;
    if (json) {
        gs_buf_printf(out,
                      ",\n      \"managed\": {\"pool_of_managed_memory\": %s, \"cap\": %llu, "
                      "\"refused_at_cap\": %llu, \"prefetches\": %llu, \"spilled_reserved\": %llu, "
                      "\"spilled_allocations\": %llu, \"spilled_bytes\": %llu, "
                      "\"peak_reserved_both\": %llu, \"peak_on_device\": %llu, "
                      "\"peak_spilled\": %llu}",
                      p->managed ? "true" : "false", (unsigned long long)cap,
                      (unsigned long long)p->refused_at_cap, (unsigned long long)p->prefetches,
                      (unsigned long long)spill_reserved,
                      (unsigned long long)p->spilled_allocations,
                      (unsigned long long)p->spilled_bytes, (unsigned long long)p->both_peak,
                      (unsigned long long)p->both_peak_device,
                      (unsigned long long)p->both_peak_spilled);
        return;
    }
    char cap_text[32];
    if (p->managed) {
        gs_buf_printf(out,
                      "gpushim: device %d: managed memory: the pool's chunks are managed memory; "
                      "%llu prefetch%s; cap %s, %llu allocation%s refused at the cap\n",
                      device, (unsigned long long)p->prefetches, p->prefetches == 1 ? "" : "es",
                      cap ? gs_format_bytes(cap, cap_text) : "none",
                      (unsigned long long)p->refused_at_cap, p->refused_at_cap == 1 ? "" : "s");
        return;
    }
    char now_text[32], bytes_text[32], peak_text[32], device_text[32], spilled_text[32];
    gs_buf_printf(out,
                  "gpushim: device %d: spilled to managed memory: %llu allocation%s, %s in all, "
                  "%s reserved now; cap %s; at the peak, %s reserved: %s on the device, %s "
                  "spilled\n",
                  device, (unsigned long long)p->spilled_allocations,
                  p->spilled_allocations == 1 ? "" : "s",
                  gs_format_bytes(p->spilled_bytes, bytes_text),
                  gs_format_bytes(spill_reserved, now_text),
                  cap ? gs_format_bytes(cap, cap_text) : "none",
                  gs_format_bytes(p->both_peak, peak_text),
                  gs_format_bytes(p->both_peak_device, device_text),
                  gs_format_bytes(p->both_peak_spilled, spilled_text));
}
