#include "fake_upstream.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

fake_upstream_t fake;
static pthread_mutex_t fake_lock =
    PTHREAD_MUTEX_INITIALIZER; /* the pool calls in from many threads */

/* Sizes are kept in a small table keyed by address so frees can give memory back. */
#define FAKE_SLOTS 4096
static struct {
    CUdeviceptr base;
    uint64_t bytes;
    uintptr_t ctx;
    bool managed;
} slots[FAKE_SLOTS];

/* Virtual memory management (while fake.vmm): physical allocations are kept until both
 * released and unmapped, as the driver keeps them. */
static struct {
    uint64_t bytes;
    CUdeviceptr mapped_at; /* 0: not mapped */
    bool live, released;
} handles[FAKE_SLOTS];

/* Device memory taken: used, and its peak. */
static void charge(uint64_t bytes)
{
    fake.used += bytes;
    if (fake.used > fake.peak_used)
        fake.peak_used = fake.used;
}

static CUresult take_slot(CUdeviceptr *p, uint64_t rounded, bool managed)
{
    for (int i = 0; i < FAKE_SLOTS; i++) {
        if (slots[i].base == 0) {
            slots[i].base = fake.next_address;
            slots[i].bytes = rounded;
            slots[i].ctx = fake.ctx;
            slots[i].managed = managed;
            *p = fake.next_address;
            fake.next_address += rounded + 4096; /* gaps: chunks are never adjacent */
            if (managed)
                fake.managed_used += rounded;
            else
                charge(rounded);
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult fake_alloc_unlocked(CUdeviceptr *p, size_t bytes)
{
    fake.allocs++;
    if (p == NULL || bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake.fail_next_allocs > 0) {
        fake.fail_next_allocs--;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    uint64_t rounded = (bytes + 511) & ~511ull;
    if (bytes > fake.limit || fake.used + rounded > fake.limit) /* as the driver: no wrapping */
        return CUDA_ERROR_OUT_OF_MEMORY;
    return take_slot(p, rounded, false);
}

static CUresult fake_free_unlocked(CUdeviceptr p)
{
    fake.frees++;
    if (p == 0)
        return CUDA_SUCCESS;
    for (int i = 0; i < FAKE_SLOTS; i++) {
        if (slots[i].base == p) {
            if (slots[i].managed)
                fake.managed_used -= slots[i].bytes;
            else
                fake.used -= slots[i].bytes;
            slots[i].base = 0;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_VALUE;
}

static CUresult fake_pitch(CUdeviceptr *p, size_t *pitch, size_t width, size_t height, unsigned e)
{
    (void)e;
    *pitch = (width + 511) & ~(size_t)511;
    return fake_alloc_unlocked(p, *pitch * height);
}

static CUresult fake_alloc_async(CUdeviceptr *p, size_t bytes, CUstream s)
{
    (void)s;
    fake.async_allocs++;
    return fake_alloc_unlocked(p, bytes);
}

static CUresult fake_free_async(CUdeviceptr p, CUstream s)
{
    (void)s;
    fake.async_frees++;
    return fake_free_unlocked(p);
}

static CUresult fake_managed_unlocked(CUdeviceptr *p, size_t bytes, unsigned flags)
{
    (void)flags;
    fake.managed_allocs++;
    if (p == NULL || bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    return take_slot(p, (bytes + 511) & ~511ull, true);
}

static CUresult fake_prefetch(CUdeviceptr p, size_t bytes, CUmemLocation where, unsigned flags,
                              CUstream stream)
{
    (void)p, (void)where, (void)flags, (void)stream;
    pthread_mutex_lock(&fake_lock);
    fake.prefetches++;
    fake.prefetched_bytes += bytes;
    pthread_mutex_unlock(&fake_lock);
    return CUDA_SUCCESS;
}

static CUresult fake_advise(CUdeviceptr p, size_t bytes, CUmem_advise advice, CUmemLocation where)
{
    pthread_mutex_lock(&fake_lock);
    int i = fake.advices++ % 16;
    fake.advice[i].at = p;
    fake.advice[i].bytes = bytes;
    fake.advice[i].advice = advice;
    fake.advice[i].where = where.type;
    pthread_mutex_unlock(&fake_lock);
    return CUDA_SUCCESS;
}

static CUresult fake_host_alloc(void **p, size_t bytes, unsigned flags)
{
    pthread_mutex_lock(&fake_lock);
    fake.host_allocs++;
    fake.last_host_flags = flags;
    bool fail = fake.fail_next_host_allocs > 0 && fake.fail_next_host_allocs-- > 0;
    pthread_mutex_unlock(&fake_lock);
    if (fail)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *p = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult fake_alloc_host(void **p, size_t bytes)
{
    return fake_host_alloc(p, bytes, 0);
}

static CUresult fake_free_host(void *p)
{
    pthread_mutex_lock(&fake_lock);
    fake.host_frees++;
    pthread_mutex_unlock(&fake_lock);
    free(p);
    return CUDA_SUCCESS;
}

static CUresult fake_from_pool(CUdeviceptr *p, size_t bytes, CUmemoryPool pool, CUstream s)
{
    (void)pool, (void)s;
    pthread_mutex_lock(&fake_lock);
    fake.pool_allocs++;
    CUresult rc = fake_alloc_unlocked(p, bytes);
    pthread_mutex_unlock(&fake_lock);
    return rc;
}

static CUresult fake_info_unlocked(size_t *free_bytes, size_t *total)
{
    fake.infos++;
    *free_bytes = fake.limit - fake.used;
    *total = fake.limit;
    return CUDA_SUCCESS;
}

static CUresult fake_sync_unlocked(void)
{
    fake.syncs++;
    for (uint64_t start = gs_now_ns(); gs_now_ns() - start < fake.sync_ns;) {
    }
    return CUDA_SUCCESS;
}

static CUresult fake_device_count(int *count)
{
    *count = fake.devices;
    return CUDA_SUCCESS;
}

static CUresult fake_ctx_device(CUdevice *d)
{
    *d = fake.device;
    return CUDA_SUCCESS;
}

static CUresult fake_total_mem(size_t *bytes, CUdevice d)
{
    (void)d;
    *bytes = fake.limit;
    return CUDA_SUCCESS;
}

static CUresult fake_attribute(int *value, CUdevice_attribute attr, CUdevice d)
{
    (void)d;
    *value = attr == CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT               ? 32
             : attr == CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED ? fake.vmm
                                                                               : 0;
    return CUDA_SUCCESS;
}

static CUresult fake_range_unlocked(CUdeviceptr *base, size_t *size, CUdeviceptr p)
{
    for (int i = 0; i < FAKE_SLOTS; i++) {
        if (slots[i].base && p >= slots[i].base && p < slots[i].base + slots[i].bytes) {
            *base = slots[i].base;
            *size = slots[i].bytes;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_NOT_FOUND;
}

static CUresult fake_ipc(CUipcMemHandle *h, CUdeviceptr p)
{
    CUdeviceptr base;
    size_t size;
    if (fake_range_unlocked(&base, &size, p) != CUDA_SUCCESS)
        return CUDA_ERROR_INVALID_VALUE;
    memset(h, 0, sizeof *h);
    memcpy(h->reserved, &base, sizeof base);
    return CUDA_SUCCESS;
}

typedef struct fake_event {
    int record;
    CUstream stream;
} fake_event_t;

static CUresult fake_event_create(CUevent *event, unsigned int flags)
{
    (void)flags;
    if (!fake.events)
        return CUDA_ERROR_NOT_SUPPORTED;
    *event = (CUevent)calloc(1, sizeof(fake_event_t));
    return *event ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult fake_event_record(CUevent event, CUstream stream)
{
    ((fake_event_t *)event)->record = ++fake.event_records;
    ((fake_event_t *)event)->stream = stream;
    return CUDA_SUCCESS;
}

static CUresult fake_event_query(CUevent event)
{
    if (fake.events_busy ||
        (fake.busy_stream && ((fake_event_t *)event)->stream == fake.busy_stream))
        return CUDA_ERROR_NOT_READY;
    if (fake.events_busy_queries > 0) {
        fake.events_busy_queries--;
        return CUDA_ERROR_NOT_READY;
    }
    int record = ((fake_event_t *)event)->record;
    if (record > fake.last_completed_record)
        fake.last_completed_record = record;
    return CUDA_SUCCESS;
}

static CUresult fake_event_destroy(CUevent event)
{
    free(event);
    return CUDA_SUCCESS;
}

static CUresult fake_stream_create(CUstream *stream, unsigned int flags)
{
    (void)flags;
    fake.streams_created++;
    *stream = (CUstream)(uintptr_t)(0x5000 + fake.streams_created);
    return CUDA_SUCCESS;
}

/* Like the driver: every allocation of the context is gone. Addresses are never handed out
 * again (next_address only grows), so a stale pointer cannot pass for a new block. */
static CUresult fake_primary_reset_unlocked(CUdevice d)
{
    (void)d;
    fake.resets++;
    memset(slots, 0, sizeof slots);
    fake.used = 0; /* mapped memory is not the context's: it stays (see handles) */
    for (int i = 0; i < FAKE_SLOTS; i++)
        if (handles[i].live)
            fake.used += handles[i].bytes;
    return CUDA_SUCCESS;
}

static CUresult fake_primary_release_unlocked(CUdevice d)
{
    if (fake.retained == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (--fake.retained == 0)
        return fake_primary_reset_unlocked(d);
    return CUDA_SUCCESS;
}

static CUresult fake_primary_state(CUdevice d, unsigned int *flags, int *active)
{
    (void)d;
    *flags = 0;
    *active = fake.retained > 0;
    return CUDA_SUCCESS;
}

static CUresult fake_stream_create_with_priority(CUstream *stream, unsigned int flags, int priority)
{
    (void)priority;
    return fake_stream_create(stream, flags);
}

static CUresult fake_stream_query(CUstream stream)
{
    return fake.events_busy || (fake.busy_stream && stream == fake.busy_stream)
               ? CUDA_ERROR_NOT_READY
               : CUDA_SUCCESS;
}

static CUresult fake_stream_destroy(CUstream stream)
{
    (void)stream;
    fake.streams_destroyed++;
    return CUDA_SUCCESS;
}

static CUresult fake_ctx_get_current(CUcontext *ctx)
{
    *ctx = (CUcontext)fake.ctx;
    return CUDA_SUCCESS;
}

/* Like the driver: the context's allocations are gone (addresses are never reused). */
static CUresult fake_ctx_destroy_unlocked(CUcontext ctx)
{
    for (int i = 0; i < FAKE_SLOTS; i++)
        if (slots[i].base && slots[i].ctx == (uintptr_t)ctx) {
            fake.used -= slots[i].bytes;
            slots[i].base = 0;
            fake.destroyed_allocations++;
        }
    return CUDA_SUCCESS;
}

static CUresult fake_reserve_unlocked(CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr,
                                      unsigned long long flags)
{
    (void)align, (void)addr, (void)flags;
    *p = fake.next_address;
    fake.next_address += size + 4096;
    fake.va_reserved += size;
    return CUDA_SUCCESS;
}

static CUresult fake_create_unlocked(CUmemGenericAllocationHandle *h, size_t size,
                                     const CUmemAllocationProp *prop, unsigned long long flags)
{
    (void)prop, (void)flags;
    fake.vmm_creates++;
    if (fake.fail_next_allocs > 0) {
        fake.fail_next_allocs--;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (size % (2u << 20) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake.used + size > fake.limit)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < FAKE_SLOTS; i++)
        if (!handles[i].live) {
            handles[i].live = true;
            handles[i].released = false;
            handles[i].mapped_at = 0;
            handles[i].bytes = size;
            charge(size);
            *h = (CUmemGenericAllocationHandle)i + 1;
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_OUT_OF_MEMORY;
}

static void drop_if_unused(int i)
{
    if (handles[i].released && handles[i].mapped_at == 0) {
        handles[i].live = false;
        fake.used -= handles[i].bytes;
    }
}

static CUresult fake_release_unlocked(CUmemGenericAllocationHandle h)
{
    if (h == 0 || h > FAKE_SLOTS || !handles[h - 1].live || handles[h - 1].released)
        return CUDA_ERROR_INVALID_VALUE;
    handles[h - 1].released = true;
    drop_if_unused((int)h - 1);
    return CUDA_SUCCESS;
}

static CUresult fake_map_unlocked(CUdeviceptr p, size_t size, size_t offset,
                                  CUmemGenericAllocationHandle h, unsigned long long flags)
{
    (void)flags;
    if (h == 0 || h > FAKE_SLOTS || !handles[h - 1].live || handles[h - 1].mapped_at ||
        offset != 0 || size != handles[h - 1].bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake.fail_next_maps > 0) {
        fake.fail_next_maps--;
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    handles[h - 1].mapped_at = p;
    fake.vmm_maps++;
    return CUDA_SUCCESS;
}

static CUresult fake_unmap_unlocked(CUdeviceptr p, size_t size)
{
    for (int i = 0; i < FAKE_SLOTS; i++)
        if (handles[i].live && handles[i].mapped_at == p) {
            if (handles[i].bytes != size)
                return CUDA_ERROR_INVALID_VALUE; /* whole mappings only */
            handles[i].mapped_at = 0;
            fake.vmm_unmaps++;
            drop_if_unused(i);
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_INVALID_VALUE;
}

static CUresult fake_set_access_unlocked(CUdeviceptr p, size_t size, const CUmemAccessDesc *desc,
                                         size_t count)
{
    (void)p, (void)size;
    fake.vmm_access_devices = (int)count;
    for (size_t i = 0; i < count; i++)
        if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

static CUresult fake_granularity(size_t *granularity, const CUmemAllocationProp *prop,
                                 CUmemAllocationGranularity_flags option)
{
    (void)prop, (void)option;
    *granularity = 2u << 20;
    return CUDA_SUCCESS;
}

#define LOCKED(name, params, args)                                                                 \
    static CUresult name params                                                                    \
    {                                                                                              \
        pthread_mutex_lock(&fake_lock);                                                            \
        CUresult rc = name##_unlocked args;                                                        \
        pthread_mutex_unlock(&fake_lock);                                                          \
        return rc;                                                                                 \
    }
LOCKED(fake_alloc, (CUdeviceptr * p, size_t bytes), (p, bytes))
LOCKED(fake_managed, (CUdeviceptr * p, size_t bytes, unsigned flags), (p, bytes, flags))
LOCKED(fake_free, (CUdeviceptr p), (p))
LOCKED(fake_info, (size_t * free_bytes, size_t *total), (free_bytes, total))
LOCKED(fake_sync, (void), ())
LOCKED(fake_range, (CUdeviceptr * base, size_t *size, CUdeviceptr p), (base, size, p))
LOCKED(fake_primary_reset, (CUdevice d), (d))
LOCKED(fake_primary_release, (CUdevice d), (d))
LOCKED(fake_ctx_destroy, (CUcontext ctx), (ctx))
LOCKED(fake_reserve,
       (CUdeviceptr * p, size_t size, size_t align, CUdeviceptr addr, unsigned long long flags),
       (p, size, align, addr, flags))
LOCKED(fake_create,
       (CUmemGenericAllocationHandle * h, size_t size, const CUmemAllocationProp *prop,
        unsigned long long flags),
       (h, size, prop, flags))
LOCKED(fake_release, (CUmemGenericAllocationHandle h), (h))
LOCKED(fake_map,
       (CUdeviceptr p, size_t size, size_t offset, CUmemGenericAllocationHandle h,
        unsigned long long flags),
       (p, size, offset, h, flags))
LOCKED(fake_unmap, (CUdeviceptr p, size_t size), (p, size))
LOCKED(fake_set_access, (CUdeviceptr p, size_t size, const CUmemAccessDesc *desc, size_t count),
       (p, size, desc, count))

static const gs_driver_t fake_table = {
    .mem_alloc = fake_alloc,
    .mem_alloc_pitch = fake_pitch,
    .mem_free = fake_free,
    .mem_alloc_managed = fake_managed,
    .mem_alloc_async = fake_alloc_async,
    .mem_alloc_async_ptsz = fake_alloc_async,
    .mem_free_async = fake_free_async,
    .mem_free_async_ptsz = fake_free_async,
    .mem_get_info = fake_info,
    .mem_get_address_range = fake_range,
    .ipc_get_mem_handle = fake_ipc,
    .ctx_synchronize = fake_sync,
    .device_get_count = fake_device_count,
    .ctx_get_device = fake_ctx_device,
    .device_get_attribute = fake_attribute,
    .device_total_mem = fake_total_mem,
    .event_create = fake_event_create,
    .event_record = fake_event_record,
    .event_query = fake_event_query,
    .event_destroy = fake_event_destroy,
    .stream_create = fake_stream_create,
    .stream_create_with_priority = fake_stream_create_with_priority,
    .stream_destroy_v2 = fake_stream_destroy,
    .stream_query = fake_stream_query,
    .primary_ctx_reset_v2 = fake_primary_reset,
    .primary_ctx_release_v2 = fake_primary_release,
    .primary_ctx_get_state = fake_primary_state,
    .ctx_get_current = fake_ctx_get_current,
    .ctx_destroy_v2 = fake_ctx_destroy,
    .mem_address_reserve = fake_reserve,
    .mem_create = fake_create,
    .mem_release = fake_release,
    .mem_map = fake_map,
    .mem_unmap = fake_unmap,
    .mem_set_access = fake_set_access,
    .mem_get_allocation_granularity = fake_granularity,
    .mem_prefetch_async = fake_prefetch,
    .mem_advise = fake_advise,
    .mem_host_alloc = fake_host_alloc,
    .mem_alloc_host = fake_alloc_host,
    .mem_free_host = fake_free_host,
    .mem_alloc_from_pool_async = fake_from_pool,
};

void fake_upstream_install(uint64_t limit)
{
    memset(&fake, 0, sizeof fake);
    memset(slots, 0, sizeof slots);
    memset(handles, 0, sizeof handles);
    fake.limit = limit;
    fake.devices = 1;
    fake.next_address = 0x7f0000000000ull;
    gs_driver_override(&fake_table);
}
