/* fake_upstream.h: an in-process driver table for unit tests of the core and the backends.
 * Device memory is a range of fake addresses (never dereferenced); every call is counted, and
 * the next N calls of mem_alloc can be made to fail. */
#ifndef GS_FAKE_UPSTREAM_H
#define GS_FAKE_UPSTREAM_H

#include "gs.h"

typedef struct fake_upstream {
    int allocs, frees, syncs, infos, async_allocs, async_frees;
    int fail_next_allocs;        /* the next N mem_alloc calls return OUT_OF_MEMORY */
    uint64_t total, used, limit; /* limit: bytes the fake device has */
    uint64_t peak_used;
    uint64_t next_address;
    int device;       /* current device */
    int devices;      /* what cuDeviceGetCount says (1 after install) */
    uint64_t sync_ns; /* how long a synchronization takes (a busy device) */
    /* Events: refused unless events is set; while events_busy, queries answer NOT_READY. Each
     * record is numbered; last_completed_record is the newest one a query saw complete. */
    bool events, events_busy;
    int events_busy_queries; /* the next N event queries answer NOT_READY */
    CUstream busy_stream;    /* work queued there: its events and its query answer NOT_READY */
    int streams_destroyed;
    int event_records, last_completed_record, streams_created;
    /* The primary context: a reset frees every allocation; a release makes it inactive (and
     * frees them) when retained is 0 afterwards. */
    int resets, retained;
    /* Contexts: the current one (a number), and what cuCtxDestroy freed. Every allocation
     * records the context current at the time. */
    uintptr_t ctx;
    int destroyed_allocations;
    /* Virtual memory management: offered while vmm is set. fail_next_maps: the next N cuMemMap
     * calls fail (CUDA_ERROR_NOT_SUPPORTED). */
    bool vmm;
    int vmm_creates, vmm_maps, vmm_unmaps, vmm_access_devices, fail_next_maps;
    uint64_t va_reserved;
    /* Managed memory: host memory, not limited by the device (oversubscription works). */
    int managed_allocs, prefetches;
    uint64_t managed_used, prefetched_bytes;
    /* cuMemAdvise calls, the latest ADVICE_KEPT of them. */
    int advices;
    struct {
        CUdeviceptr at;
        uint64_t bytes;
        CUmem_advise advice;
        CUmemLocationType where;
    } advice[16];
    /* Pinned host memory (real host memory, so a test may write it). */
    int host_allocs, host_frees, pool_allocs;
    int fail_next_host_allocs; /* the next N pinned allocations answer OUT_OF_MEMORY */
    unsigned last_host_flags;
} fake_upstream_t;

extern fake_upstream_t fake;
/* Installs the fake as the driver and resets it (limit bytes of device memory). */
void fake_upstream_install(uint64_t limit);

#endif
