/* budget.c: GPUSHIM_DEVICE_LIMIT, a per-process budget of device memory (HAMi-core's
 * CUDA_DEVICE_MEMORY_LIMIT), in every mode.
 *
 * What counts: every byte of device memory the process holds through the shim or the driver
 * entry points it intercepts: cuMemAlloc, cuMemAllocPitch and cuMemAllocAsync passed through,
 * cuMemAllocFromPoolAsync, the program's own cuMemCreate (until cuMemRelease), and the pool's
 * chunks and mappings (what the pool keeps for reuse is the process's too). Device allocations
 * past the budget fail with CUDA_ERROR_OUT_OF_MEMORY. Managed memory the shim takes (managed
 * mode, spill) is placed instead: the part within the budget is preferred on the device, the
 * rest in host memory (gs_budget_place). The program's own cuMemAllocManaged is not counted:
 * managed memory may pass the device's size by design.
 *
 * Counters are atomics; nothing here calls CUDA except the one-time resolution of a percentage
 * against the device's size. */
#include "gs.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

static struct {
    _Atomic uint64_t used, peak;  /* device bytes charged, and placed managed bytes */
    _Atomic uint64_t on_host;     /* managed bytes placed in host memory */
    _Atomic uint64_t refused;     /* allocations refused at the budget */
    _Atomic uint64_t limit;       /* resolved; 0: none */
    atomic_bool ready;
} gs_budget[GS_MAX_DEVICES];

bool gs_budget_set(void)
{
    return gs_opts.device_limit.bytes != 0 || gs_opts.device_limit.percent > 0;
}

uint64_t gs_budget_limit(int device)
{
    if (!gs_budget_set())
        return 0;
    if (!atomic_load_explicit(&gs_budget[device].ready, memory_order_acquire)) {
        const gs_driver_t *drv = gs_driver();
        size_t total = 0;
        if (drv->device_total_mem)
            drv->device_total_mem(&total, device);
        atomic_store(&gs_budget[device].limit, gs_size_resolve(gs_opts.device_limit, total));
        atomic_store_explicit(&gs_budget[device].ready, true, memory_order_release);
    }
    return atomic_load_explicit(&gs_budget[device].limit, memory_order_relaxed);
}

static void raise_peak(int device, uint64_t now)
{
    uint64_t peak = atomic_load_explicit(&gs_budget[device].peak, memory_order_relaxed);
    while (now > peak && !atomic_compare_exchange_weak(&gs_budget[device].peak, &peak, now)) {
    }
}

bool gs_budget_charge(int device, uint64_t bytes)
{
    uint64_t limit = gs_budget_limit(device);
    if (limit == 0)
        return true;
    uint64_t before = atomic_fetch_add(&gs_budget[device].used, bytes);
    if (before + bytes < before || before + bytes > limit) { /* also wraps: past any budget */
        atomic_fetch_sub(&gs_budget[device].used, bytes);
        atomic_fetch_add_explicit(&gs_budget[device].refused, 1, memory_order_relaxed);
        return false;
    }
    raise_peak(device, before + bytes);
    return true;
}

void gs_budget_uncharge(int device, uint64_t bytes)
{
    if (gs_budget_limit(device) != 0 && bytes)
        atomic_fetch_sub(&gs_budget[device].used, bytes);
}

uint64_t gs_budget_place(int device, uint64_t bytes)
{
    uint64_t limit = gs_budget_limit(device);
    if (limit == 0)
        return bytes;
    uint64_t used = atomic_load(&gs_budget[device].used), fits;
    do {
        uint64_t room = used < limit ? limit - used : 0;
        fits = bytes < room ? bytes : room;
    } while (!atomic_compare_exchange_weak(&gs_budget[device].used, &used, used + fits));
    raise_peak(device, used + fits);
    atomic_fetch_add(&gs_budget[device].on_host, bytes - fits);
    return fits;
}

void gs_budget_unplace(int device, uint64_t on_device, uint64_t on_host)
{
    if (gs_budget_limit(device) == 0)
        return;
    atomic_fetch_sub(&gs_budget[device].used, on_device);
    atomic_fetch_sub(&gs_budget[device].on_host, on_host);
}

void gs_budget_mem_info(int device, size_t *free_bytes, size_t *total_bytes, uint64_t idle)
{
    uint64_t limit = gs_budget_limit(device);
    if (limit == 0)
        return;
    uint64_t used = atomic_load(&gs_budget[device].used);
    uint64_t room = (used < limit ? limit - used : 0) + idle; /* idle: kept by the pool, free */
    if (room > limit)
        room = limit;
    if (*free_bytes > room)
        *free_bytes = room;
    *total_bytes = limit;
}

/* ---- the program's cuMemCreate handles, for cuMemRelease -------------------------------- */

typedef struct handle_entry {
    CUmemGenericAllocationHandle handle;
    uint64_t bytes;
    int device;
} handle_entry_t;

static handle_entry_t *gs_handles;
static size_t gs_handle_count, gs_handle_capacity;
static pthread_mutex_t gs_handle_lock = PTHREAD_MUTEX_INITIALIZER;

int gs_budget_handle_add(CUmemGenericAllocationHandle handle, int device, uint64_t bytes)
{
    pthread_mutex_lock(&gs_handle_lock);
    if (gs_handle_count == gs_handle_capacity) {
        size_t capacity = gs_handle_capacity ? 2 * gs_handle_capacity : 64;
        handle_entry_t *grown = realloc(gs_handles, capacity * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&gs_handle_lock);
            return -ENOMEM;
        }
        gs_handles = grown;
        gs_handle_capacity = capacity;
    }
    gs_handles[gs_handle_count++] = (handle_entry_t){handle, bytes, device};
    pthread_mutex_unlock(&gs_handle_lock);
    return 0;
}

/* The handle's device and bytes, forgotten; -ENOENT for a handle it does not know. Newest first:
 * programs release what they made last soonest. */
int gs_budget_handle_remove(CUmemGenericAllocationHandle handle, int *device, uint64_t *bytes)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&gs_handle_lock);
    for (size_t i = gs_handle_count; i-- > 0;)
        if (gs_handles[i].handle == handle) {
            *device = gs_handles[i].device;
            *bytes = gs_handles[i].bytes;
            gs_handles[i] = gs_handles[--gs_handle_count];
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&gs_handle_lock);
    return rc;
}

void gs_budget_report(int device, gs_buf_t *out, bool json)
{
    uint64_t limit = atomic_load(&gs_budget[device].limit);
    if (limit == 0)
        return;
    uint64_t used = atomic_load(&gs_budget[device].used), peak = atomic_load(&gs_budget[device].peak);
    uint64_t on_host = atomic_load(&gs_budget[device].on_host);
    uint64_t refused = atomic_load(&gs_budget[device].refused);
    if (json) {
        gs_buf_printf(out,
                      ",\n      \"device_limit\": {\"limit\": %llu, \"used\": %llu, \"peak\": %llu, "
                      "\"refused\": %llu, \"managed_in_host_memory\": %llu}",
                      (unsigned long long)limit, (unsigned long long)used,
                      (unsigned long long)peak, (unsigned long long)refused,
                      (unsigned long long)on_host);
        return;
    }
    char limit_text[32], used_text[32], peak_text[32], host_text[32];
    gs_buf_printf(out,
                  "gpushim: device %d: device limit %s (GPUSHIM_DEVICE_LIMIT): %s used now, peak "
                  "%s; %llu allocation%s refused at the limit; %s of managed memory placed in "
                  "host memory\n",
                  device, gs_format_bytes(limit, limit_text), gs_format_bytes(used, used_text),
                  gs_format_bytes(peak, peak_text), (unsigned long long)refused,
                  refused == 1 ? "" : "s", gs_format_bytes(on_host, host_text));
}

/* Fork child (the parent's memory is not the child's) and tests. */
void gs_budget_forget(void)
{
    for (int d = 0; d < GS_MAX_DEVICES; d++) {
        atomic_store(&gs_budget[d].used, 0);
        atomic_store(&gs_budget[d].peak, 0);
        atomic_store(&gs_budget[d].on_host, 0);
        atomic_store(&gs_budget[d].refused, 0);
        atomic_store(&gs_budget[d].ready, false);
        atomic_store(&gs_budget[d].limit, 0);
    }
    gs_handle_count = 0;
    pthread_mutex_init(&gs_handle_lock, NULL);
}
