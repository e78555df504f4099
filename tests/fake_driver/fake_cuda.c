/* fake_cuda.c: a libcuda.so.1 for tests on machines without a GPU. Device memory is host memory,
 * so programs can copy into it and read it back. It implements the entry points gpushim
 * intercepts plus what a small program needs (init, contexts, copies), and resolves them through
 * cuGetProcAddress the way the real driver does (base name, CUDA version, stream flags).
 *
 * Environment:
 *   FAKECUDA_DEVICES=N          devices (default 1)
 *   FAKECUDA_MEMORY=BYTES       memory per device (default 1 GiB); allocations past it fail
 *   FAKECUDA_FAIL=SPEC[,SPEC]   fault injection; SPEC is NAME:N (the Nth call of NAME fails),
 *                               NAME:N+ (the Nth and every later call), optional =CODE (default
 *                               CUDA_ERROR_OUT_OF_MEMORY)
 *   FAKECUDA_STATS=stderr|PATH  at exit, one line per entry point called: "fakecuda: calls NAME N"
 * While a stream captures, what breaks a real capture fails with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates it (cuStreamEndCapture then answers
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED): a context synchronization, an event record or prefetch
 * on the legacy stream, and, as from a thread in global capture mode, an event query or a
 * cuMemFree (measured on an H200, driver 580: in relaxed mode those two pass, the others fail).
 * A primary context reset (or its last release) forgets every allocation of the device, as the
 * driver frees them; their host memory is kept (never reused), and copies and memsets check that
 * they touch a live allocation, so a program handed stale memory fails as on a GPU.
 *   FAKECUDA_EVENT_QUERIES=N    an event answers CUDA_ERROR_NOT_READY to its first N queries (as
 *                               if its stream were busy), unless a cuCtxSynchronize came since
 *   FAKECUDA_VMM=1              the devices offer virtual memory management (cuMemAddressReserve,
 *                               cuMemCreate, cuMemMap...): a reserved range is inaccessible host
 *                               address space, a mapping makes a piece of it memory. Mapped memory
 *                               is not a context's: a reset leaves it (the shim unmaps it itself)
 * Managed memory is host memory with no device limit: oversubscription works, as on a real GPU.
 * cuMemAdvise remembers the preferred location and the accessing device of each advised range,
 * and cuMemRangeGetAttribute answers from them. Pinned host memory (cuMemHostAlloc,
 * cuMemAllocHost) is host memory that remembers its flags (cuMemHostGetFlags).
 */
#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#undef cuGetProcAddress

#define FAKE_EXPORT __attribute__((visibility("default")))
#define MAX_DEVICES 8
#define MAX_BLOCKS 65536

enum { KIND_DEVICE, KIND_MANAGED, KIND_ASYNC, KIND_POOL, KIND_MAPPED };

typedef struct block {
    uintptr_t base;
    size_t size;
    int device;
    int kind;
    uintptr_t ctx; /* the context current at the allocation */
    unsigned long long buffer_id;
} block_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static block_t blocks[MAX_BLOCKS];
static size_t used[MAX_DEVICES];
static size_t high_water; /* blocks[] beyond this index are all empty */
static size_t memory_per_device = 1ull << 30;
static int device_count = 1;
static int event_queries; /* FAKECUDA_EVENT_QUERIES */
static bool vmm;          /* FAKECUDA_VMM */
static atomic_ulong sync_generation;
static atomic_bool initialized;
/* A context handle: the device ordinal + 1 for a primary context; 0x1000 + 16 n + the device
 * for the n-th context made by cuCtxCreate. */
static __thread int current_device = -1; /* -1: no context */
static __thread uintptr_t current_ctx;
static atomic_int contexts_made;

/* ---- call counting and fault injection ---- */

/* Grouped by hand: clang-format would make a staircase of it. */
/* clang-format off */
#define FAKE_FUNCS(X)                                                                              \
    X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceTotalMem_v2)     \
    X(cuDeviceGetAttribute) X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxReset_v2)              \
    X(cuDevicePrimaryCtxRelease_v2) X(cuDevicePrimaryCtxGetState)                                  \
    X(cuCtxSetCurrent) X(cuCtxGetCurrent) X(cuCtxGetDevice) X(cuCtxGetDevice_v2)                   \
    X(cuCtxCreate_v2) X(cuCtxDestroy_v2)                                                           \
    X(cuCtxSynchronize) X(cuCtxSynchronize_v2)                                                     \
    X(cuMemAlloc_v2) X(cuMemAllocPitch_v2) X(cuMemFree_v2) X(cuMemAllocManaged)                    \
    X(cuMemAllocAsync) X(cuMemAllocAsync_ptsz) X(cuMemFreeAsync) X(cuMemFreeAsync_ptsz)            \
    X(cuMemAllocFromPoolAsync) X(cuMemGetInfo_v2) X(cuMemGetAddressRange_v2)                       \
    X(cuPointerGetAttribute) X(cuPointerGetAttributes) X(cuIpcGetMemHandle)                        \
    X(cuMemcpyHtoD_v2) X(cuMemcpyDtoH_v2) X(cuMemsetD8_v2) X(cuGetProcAddress)                     \
    X(cuGetProcAddress_v2) X(cuMemPrefetchAsync_v2) X(cuMemAdvise_v2)                              \
    X(cuEventCreate) X(cuEventRecord) X(cuEventQuery) X(cuEventDestroy_v2)                         \
    X(cuStreamCreate) X(cuStreamCreateWithPriority) X(cuStreamQuery) X(cuStreamDestroy_v2)        \
    X(cuStreamBeginCapture_v2) X(cuStreamEndCapture) X(cuLaunchKernel) X(cuLaunchKernel_ptsz)     \
    X(cuDeviceCanAccessPeer) X(cuMemAddressReserve) X(cuMemCreate) X(cuMemRelease) X(cuMemMap)    \
    X(cuMemUnmap) X(cuMemSetAccess) X(cuMemGetAllocationGranularity)                             \
    X(cuMemHostAlloc) X(cuMemAllocHost_v2) X(cuMemFreeHost) X(cuMemHostGetFlags)                  \
    X(cuMemRangeGetAttribute)
/* clang-format on */

enum {
#define FAKE_ENUM(name) ID_##name,
    FAKE_FUNCS(FAKE_ENUM)
#undef FAKE_ENUM
        ID_COUNT
};

static const char *const func_names[] = {
#define FAKE_NAME(name) #name,
    FAKE_FUNCS(FAKE_NAME)
#undef FAKE_NAME
};

static atomic_ulong calls[ID_COUNT];

typedef struct fault {
    int id;
    unsigned long nth;
    int and_later;
    CUresult code;
} fault_t;
static fault_t faults[16];
static int fault_count;

/* Counts the call; returns the injected error for it, or CUDA_SUCCESS. */
static CUresult enter(int id)
{
    unsigned long n = atomic_fetch_add(&calls[id], 1) + 1;
    for (int i = 0; i < fault_count; i++) {
        if (faults[i].id == id &&
            (n == faults[i].nth || (faults[i].and_later && n > faults[i].nth)))
            return faults[i].code;
    }
    return CUDA_SUCCESS;
}

#define ENTER(name)                                                                                \
    do {                                                                                           \
        CUresult injected_ = enter(ID_##name);                                                     \
        if (injected_ != CUDA_SUCCESS)                                                             \
            return injected_;                                                                      \
    } while (0)

/* ---- stream capture ---- */

static atomic_int capturing;
static atomic_bool capture_invalidated;

/* A call that a real capture forbids: invalidates the capture in progress. */
#define FORBIDDEN_WHILE_CAPTURING(condition)                                                       \
    do {                                                                                           \
        if (atomic_load(&capturing) > 0 && (condition)) {                                          \
            atomic_store(&capture_invalidated, true);                                              \
            return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;                                          \
        }                                                                                          \
    } while (0)

static bool legacy_stream(CUstream stream)
{
    return stream == NULL || stream == CU_STREAM_LEGACY;
}

static void parse_faults(const char *spec)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *item = strtok_r(buf, ",", &save); item && fault_count < 16;
         item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        if (!colon)
            continue;
        *colon = '\0';
        fault_t f = {.id = -1, .code = CUDA_ERROR_OUT_OF_MEMORY};
        for (int i = 0; i < ID_COUNT; i++)
            if (strcmp(func_names[i], item) == 0)
                f.id = i;
        char *end;
        f.nth = strtoul(colon + 1, &end, 10);
        if (*end == '+') {
            f.and_later = 1;
            end++;
        }
        if (*end == '=')
            f.code = (CUresult)strtol(end + 1, NULL, 10);
        if (f.id >= 0)
            faults[fault_count++] = f;
    }
}

__attribute__((constructor)) static void fake_load(void)
{
    const char *s;
    if ((s = getenv("FAKECUDA_DEVICES")))
        device_count = atoi(s) > 0 && atoi(s) <= MAX_DEVICES ? atoi(s) : 1;
    if ((s = getenv("FAKECUDA_MEMORY")))
        memory_per_device = strtoull(s, NULL, 10);
    if ((s = getenv("FAKECUDA_FAIL")))
        parse_faults(s);
    if ((s = getenv("FAKECUDA_EVENT_QUERIES")))
        event_queries = atoi(s);
    if ((s = getenv("FAKECUDA_VMM")))
        vmm = atoi(s) != 0;
}

__attribute__((destructor)) static void fake_unload(void)
{
    const char *where = getenv("FAKECUDA_STATS");
    if (!where)
        return;
    FILE *out = strcmp(where, "stderr") == 0 ? stderr : fopen(where, "w");
    if (!out)
        return;
    for (int i = 0; i < ID_COUNT; i++)
        if (atomic_load(&calls[i]))
            fprintf(out, "fakecuda: calls %s %lu\n", func_names[i], atomic_load(&calls[i]));
    fflush(out);
    if (out != stderr)
        fclose(out);
}

/* ---- memory ---- */

static block_t *find_containing(uintptr_t p)
{
    for (size_t i = 0; i < high_water; i++)
        if (blocks[i].base && p >= blocks[i].base && p < blocks[i].base + blocks[i].size)
            return &blocks[i];
    return NULL;
}

static CUresult context_device(int *device)
{
    if (!atomic_load(&initialized))
        return CUDA_ERROR_NOT_INITIALIZED;
    if (current_device < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    *device = current_device;
    return CUDA_SUCCESS;
}

static CUresult fake_alloc(CUdeviceptr *dptr, size_t size, int kind)
{
    int device;
    CUresult rc = context_device(&device);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (dptr == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    size_t rounded = (size + 511) & ~(size_t)511;
    pthread_mutex_lock(&lock);
    if (kind != KIND_MANAGED && used[device] + rounded > memory_per_device) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    void *mem = aligned_alloc(512, rounded);
    size_t slot = 0;
    while (slot < MAX_BLOCKS && blocks[slot].base)
        slot++;
    if (mem == NULL || slot == MAX_BLOCKS) {
        pthread_mutex_unlock(&lock);
        free(mem);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memset(mem, 0xA5, rounded); /* like real memory: not zeroed */
    static unsigned long long buffers_made;
    blocks[slot] = (block_t){(uintptr_t)mem, rounded, device, kind, current_ctx, ++buffers_made};
    if (kind == KIND_MANAGED)
        rounded = 0; /* host memory: no device budget */
    if (slot + 1 > high_water)
        high_water = slot + 1;
    used[device] += rounded;
    pthread_mutex_unlock(&lock);
    *dptr = (CUdeviceptr)(uintptr_t)mem;
    return CUDA_SUCCESS;
}

static CUresult fake_free(CUdeviceptr dptr)
{
    if (!atomic_load(&initialized))
        return CUDA_ERROR_NOT_INITIALIZED;
    if (dptr == 0)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&lock);
    block_t *b = find_containing((uintptr_t)dptr);
    if (b == NULL || b->base != (uintptr_t)dptr || b->kind == KIND_MAPPED) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (b->kind != KIND_MANAGED)
        used[b->device] -= b->size;
    free((void *)b->base);
    memset(b, 0, sizeof *b);
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

/* ---- entry points ---- */

FAKE_EXPORT CUresult cuInit(unsigned int flags)
{
    ENTER(cuInit);
    (void)flags;
    atomic_store(&initialized, true);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDriverGetVersion(int *version)
{
    ENTER(cuDriverGetVersion);
    *version = CUDA_VERSION;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetCount(int *count)
{
    ENTER(cuDeviceGetCount);
    *count = device_count;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    ENTER(cuDeviceGet);
    if (ordinal < 0 || ordinal >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice device)
{
    ENTER(cuDeviceTotalMem_v2);
    if (device < 0 || device >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = memory_per_device;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attr, CUdevice device)
{
    ENTER(cuDeviceGetAttribute);
    if (device < 0 || device >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    switch (attr) {
    case CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT:
        *value = 32;
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH:
        *value = 2147483647;
        return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
        *value = vmm;
        return CUDA_SUCCESS;
    default:
        *value = 0;
        return CUDA_SUCCESS;
    }
}

static int retained[MAX_DEVICES];

/* A context handle is the device ordinal + 1. */
FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice device)
{
    ENTER(cuDevicePrimaryCtxRetain);
    if (device < 0 || device >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    retained[device]++;
    pthread_mutex_unlock(&lock);
    *ctx = (CUcontext)(uintptr_t)(device + 1);
    return CUDA_SUCCESS;
}

/* Every allocation of a context is gone; the host memory stays allocated (lock held). */
static void forget_context_memory(uintptr_t ctx)
{
    for (size_t i = 0; i < high_water; i++)
        if (blocks[i].base && blocks[i].ctx == ctx) {
            if (blocks[i].kind != KIND_MANAGED)
                used[blocks[i].device] -= blocks[i].size;
            memset(&blocks[i], 0, sizeof blocks[i]); /* the memory stays: never handed out again */
        }
}

static void forget_device_memory(CUdevice device)
{
    forget_context_memory((uintptr_t)device + 1); /* the primary context's */
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice device)
{
    ENTER(cuDevicePrimaryCtxReset_v2);
    if (device < 0 || device >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    forget_device_memory(device);
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device)
{
    ENTER(cuDevicePrimaryCtxRelease_v2);
    if (device < 0 || device >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    CUresult rc = retained[device] > 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS && --retained[device] == 0)
        forget_device_memory(device);
    pthread_mutex_unlock(&lock);
    return rc;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice device, unsigned int *flags, int *active)
{
    ENTER(cuDevicePrimaryCtxGetState);
    if (device < 0 || device >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&lock);
    *flags = 0;
    *active = retained[device] > 0;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

static int device_of_context(CUcontext ctx)
{
    uintptr_t h = (uintptr_t)ctx;
    return h < 0x1000 ? (int)h - 1 : (int)(h & 15);
}

FAKE_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx)
{
    ENTER(cuCtxSetCurrent);
    current_ctx = (uintptr_t)ctx;
    current_device = ctx ? device_of_context(ctx) : -1;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetCurrent(CUcontext *ctx)
{
    ENTER(cuCtxGetCurrent);
    *ctx = (CUcontext)current_ctx;
    return CUDA_SUCCESS;
}

/* A context of its own, current from now on; its allocations go when it is destroyed. */
FAKE_EXPORT CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice device)
{
    ENTER(cuCtxCreate_v2);
    (void)flags;
    if (device < 0 || device >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    *ctx = (CUcontext)(uintptr_t)(0x1000 + 16 * (uintptr_t)atomic_fetch_add(&contexts_made, 1) +
                                  (uintptr_t)device);
    return cuCtxSetCurrent(*ctx);
}

FAKE_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    ENTER(cuCtxDestroy_v2);
    if ((uintptr_t)ctx < 0x1000)
        return CUDA_ERROR_INVALID_CONTEXT; /* a primary context is reset, not destroyed */
    pthread_mutex_lock(&lock);
    forget_context_memory((uintptr_t)ctx);
    pthread_mutex_unlock(&lock);
    if (current_ctx == (uintptr_t)ctx) {
        current_ctx = 0;
        current_device = -1;
    }
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetDevice(CUdevice *device)
{
    ENTER(cuCtxGetDevice);
    int d;
    CUresult rc = context_device(&d);
    if (rc == CUDA_SUCCESS)
        *device = d;
    return rc;
}

FAKE_EXPORT CUresult cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)
{
    ENTER(cuCtxGetDevice_v2);
    if (ctx == NULL)
        return cuCtxGetDevice(device);
    *device = device_of_context(ctx);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSynchronize(void)
{
    ENTER(cuCtxSynchronize);
    FORBIDDEN_WHILE_CAPTURING(true);
    int d;
    atomic_fetch_add(&sync_generation, 1);
    return context_device(&d);
}

FAKE_EXPORT CUresult cuCtxSynchronize_v2(CUcontext ctx)
{
    ENTER(cuCtxSynchronize_v2);
    FORBIDDEN_WHILE_CAPTURING(true);
    (void)ctx;
    atomic_fetch_add(&sync_generation, 1);
    return atomic_load(&initialized) ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

/* ---- managed-memory hints and events ---- */

static int is_managed(CUdeviceptr ptr)
{
    pthread_mutex_lock(&lock);
    block_t *b = find_containing((uintptr_t)ptr);
    int managed = b && b->kind == KIND_MANAGED;
    pthread_mutex_unlock(&lock);
    return managed;
}

FAKE_EXPORT CUresult cuMemPrefetchAsync_v2(CUdeviceptr ptr, size_t count, CUmemLocation location,
                                           unsigned int flags, CUstream stream)
{
    ENTER(cuMemPrefetchAsync_v2);
    FORBIDDEN_WHILE_CAPTURING(legacy_stream(stream));
    (void)count, (void)location, (void)flags, (void)stream;
    return is_managed(ptr) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Advised ranges, newest last: the newest that covers a range answers for it. */
#define ADVICES 256
static struct {
    uintptr_t start, end;
    CUmem_advise advice;
    int location; /* a device, or CU_DEVICE_CPU */
} advices[ADVICES];
static int advice_count;

FAKE_EXPORT CUresult cuMemAdvise_v2(CUdeviceptr ptr, size_t count, CUmem_advise advice,
                                    CUmemLocation location)
{
    ENTER(cuMemAdvise_v2);
    if (!is_managed(ptr))
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    int i = advice_count < ADVICES ? advice_count++ : ADVICES - 1;
    advices[i].start = (uintptr_t)ptr;
    advices[i].end = (uintptr_t)ptr + count;
    advices[i].advice = advice;
    advices[i].location = location.type == CU_MEM_LOCATION_TYPE_DEVICE ? location.id : CU_DEVICE_CPU;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

/* Preferred location (one int: a device, CU_DEVICE_CPU, or CU_DEVICE_INVALID without advice) and
 * accessed-by (an int per slot, CU_DEVICE_INVALID past the devices listed). */
FAKE_EXPORT CUresult cuMemRangeGetAttribute(void *data, size_t size, CUmem_range_attribute attr,
                                            CUdeviceptr ptr, size_t count)
{
    ENTER(cuMemRangeGetAttribute);
    if (!is_managed(ptr) || size < sizeof(int) || size % sizeof(int))
        return CUDA_ERROR_INVALID_VALUE;
    int *out = data;
    for (size_t k = 0; k < size / sizeof(int); k++)
        out[k] = CU_DEVICE_INVALID;
    CUmem_advise wanted = attr == CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION
                              ? CU_MEM_ADVISE_SET_PREFERRED_LOCATION
                              : CU_MEM_ADVISE_SET_ACCESSED_BY;
    if (attr != CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION && attr != CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    for (int i = advice_count - 1; i >= 0; i--)
        if (advices[i].advice == wanted && advices[i].start <= (uintptr_t)ptr &&
            (uintptr_t)ptr + count <= advices[i].end) {
            out[0] = advices[i].location;
            break;
        }
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

/* ---- pinned host memory ---- */

#define HOST_BLOCKS 4096
static struct {
    void *ptr;
    unsigned flags;
} host_blocks[HOST_BLOCKS];

static CUresult host_alloc(void **p, size_t bytes, unsigned flags)
{
    if (p == NULL || bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!atomic_load(&initialized))
        return CUDA_ERROR_NOT_INITIALIZED;
    void *m = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    if (m == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < HOST_BLOCKS; i++)
        if (host_blocks[i].ptr == NULL) {
            host_blocks[i].ptr = m;
            host_blocks[i].flags = flags;
            pthread_mutex_unlock(&lock);
            *p = m;
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&lock);
    free(m);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

FAKE_EXPORT CUresult cuMemHostAlloc(void **p, size_t bytes, unsigned int flags)
{
    ENTER(cuMemHostAlloc);
    return host_alloc(p, bytes, flags);
}

FAKE_EXPORT CUresult cuMemAllocHost_v2(void **p, size_t bytes)
{
    ENTER(cuMemAllocHost_v2);
    return host_alloc(p, bytes, 0);
}

FAKE_EXPORT CUresult cuMemFreeHost(void *p)
{
    ENTER(cuMemFreeHost);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < HOST_BLOCKS; i++)
        if (p != NULL && host_blocks[i].ptr == p) {
            host_blocks[i].ptr = NULL;
            pthread_mutex_unlock(&lock);
            free(p);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
}

FAKE_EXPORT CUresult cuMemHostGetFlags(unsigned int *flags, void *p)
{
    ENTER(cuMemHostGetFlags);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < HOST_BLOCKS; i++)
        if (p != NULL && host_blocks[i].ptr == p) {
            *flags = host_blocks[i].flags;
            pthread_mutex_unlock(&lock);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
}

typedef struct fake_event {
    int queries_left;
    unsigned long generation;
} fake_event_t;

FAKE_EXPORT CUresult cuEventCreate(CUevent *event, unsigned int flags)
{
    ENTER(cuEventCreate);
    (void)flags;
    fake_event_t *e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *event = (CUevent)e;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventRecord(CUevent event, CUstream stream)
{
    ENTER(cuEventRecord);
    FORBIDDEN_WHILE_CAPTURING(legacy_stream(stream));
    fake_event_t *e = (fake_event_t *)event;
    e->queries_left = event_queries;
    e->generation = atomic_load(&sync_generation);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventQuery(CUevent event)
{
    ENTER(cuEventQuery);
    FORBIDDEN_WHILE_CAPTURING(true);
    fake_event_t *e = (fake_event_t *)event;
    if (e->generation != atomic_load(&sync_generation) || e->queries_left <= 0)
        return CUDA_SUCCESS;
    e->queries_left--;
    return CUDA_ERROR_NOT_READY;
}

static atomic_ulong streams_made;

FAKE_EXPORT CUresult cuStreamCreate(CUstream *stream, unsigned int flags)
{
    ENTER(cuStreamCreate);
    (void)flags;
    *stream = (CUstream)(uintptr_t)(0x5000 + atomic_fetch_add(&streams_made, 1));
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamCreateWithPriority(CUstream *stream, unsigned int flags, int priority)
{
    ENTER(cuStreamCreateWithPriority);
    (void)flags, (void)priority;
    *stream = (CUstream)(uintptr_t)(0x5000 + atomic_fetch_add(&streams_made, 1));
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventDestroy_v2(CUevent event)
{
    ENTER(cuEventDestroy_v2);
    free(event);
    return CUDA_SUCCESS;
}

/* Work completes at once here: every stream is idle. */
FAKE_EXPORT CUresult cuStreamQuery(CUstream stream)
{
    ENTER(cuStreamQuery);
    (void)stream;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamDestroy_v2(CUstream stream)
{
    ENTER(cuStreamDestroy_v2);
    (void)stream;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode mode)
{
    ENTER(cuStreamBeginCapture_v2);
    (void)mode;
    if (legacy_stream(stream))
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; /* as the driver: not the legacy stream */
    atomic_fetch_add(&capturing, 1);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamEndCapture(CUstream stream, CUgraph *graph)
{
    ENTER(cuStreamEndCapture);
    (void)stream;
    if (atomic_load(&capturing) == 0)
        return CUDA_ERROR_ILLEGAL_STATE;
    atomic_fetch_sub(&capturing, 1);
    bool invalidated = atomic_exchange(&capture_invalidated, false);
    *graph = invalidated ? NULL : (CUgraph)(uintptr_t)0x6000;
    return invalidated ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size)
{
    ENTER(cuMemAlloc_v2);
    return fake_alloc(dptr, size, KIND_DEVICE);
}

FAKE_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width,
                                        size_t height, unsigned int element_size)
{
    ENTER(cuMemAllocPitch_v2);
    if (pitch == NULL || width == 0 || height == 0 ||
        (element_size != 4 && element_size != 8 && element_size != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t p = (width + 511) & ~(size_t)511;
    CUresult rc = fake_alloc(dptr, p * height, KIND_DEVICE);
    if (rc == CUDA_SUCCESS)
        *pitch = p;
    return rc;
}

FAKE_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    ENTER(cuMemFree_v2);
    FORBIDDEN_WHILE_CAPTURING(true);
    return fake_free(dptr);
}

FAKE_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags)
{
    ENTER(cuMemAllocManaged);
    (void)flags;
    return fake_alloc(dptr, size, KIND_MANAGED);
}

FAKE_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    ENTER(cuMemAllocAsync);
    (void)stream;
    return fake_alloc(dptr, size, KIND_ASYNC);
}

FAKE_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    ENTER(cuMemAllocAsync_ptsz);
    (void)stream;
    return fake_alloc(dptr, size, KIND_ASYNC);
}

FAKE_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                                             CUstream stream)
{
    ENTER(cuMemAllocFromPoolAsync);
    (void)pool;
    (void)stream;
    return fake_alloc(dptr, size, KIND_POOL);
}

FAKE_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    ENTER(cuMemFreeAsync);
    (void)stream;
    return fake_free(dptr);
}

FAKE_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    ENTER(cuMemFreeAsync_ptsz);
    (void)stream;
    return fake_free(dptr);
}

FAKE_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    ENTER(cuMemGetInfo_v2);
    int d;
    CUresult rc = context_device(&d);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&lock);
    *free_bytes = memory_per_device - used[d];
    *total = memory_per_device;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr dptr)
{
    ENTER(cuMemGetAddressRange_v2);
    pthread_mutex_lock(&lock);
    block_t *b = find_containing((uintptr_t)dptr);
    block_t copy = b ? *b : (block_t){0};
    pthread_mutex_unlock(&lock);
    if (!b)
        return CUDA_ERROR_NOT_FOUND;
    if (base)
        *base = copy.base;
    if (size)
        *size = copy.size;
    return CUDA_SUCCESS;
}

static CUresult attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    pthread_mutex_lock(&lock);
    block_t *b = find_containing((uintptr_t)ptr);
    block_t copy = b ? *b : (block_t){0};
    pthread_mutex_unlock(&lock);
    if (!b)
        return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = CU_MEMORYTYPE_DEVICE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = copy.device;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
        *(int *)data = copy.kind == KIND_MANAGED;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
        *(CUdeviceptr *)data = copy.base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE:
        *(size_t *)data = copy.size;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
        *(unsigned long long *)data = copy.buffer_id;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        *(int *)data = copy.kind != KIND_MANAGED;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        *(CUdeviceptr *)data = ptr;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

FAKE_EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    ENTER(cuPointerGetAttribute);
    return attribute(data, attr, ptr);
}

FAKE_EXPORT CUresult cuPointerGetAttributes(unsigned int count, CUpointer_attribute *attrs,
                                            void **data, CUdeviceptr ptr)
{
    ENTER(cuPointerGetAttributes);
    for (unsigned int i = 0; i < count; i++) {
        CUresult rc = attribute(data[i], attrs[i], ptr);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    return CUDA_SUCCESS;
}

/* Like the real driver: an interior pointer gets the handle of its allocation's base, and
 * managed memory is refused. */
FAKE_EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr ptr)
{
    ENTER(cuIpcGetMemHandle);
    pthread_mutex_lock(&lock);
    block_t *b = find_containing((uintptr_t)ptr);
    block_t copy = b ? *b : (block_t){0};
    pthread_mutex_unlock(&lock);
    if (!b || copy.kind == KIND_MANAGED)
        return CUDA_ERROR_INVALID_VALUE;
    memset(handle, 0, sizeof *handle);
    memcpy(handle->reserved, &copy.base, sizeof copy.base);
    return CUDA_SUCCESS;
}

/* Whether [p, p + bytes) lies in live memory (what a GPU would not fault on): one allocation, or
 * mappings that follow each other. */
static bool live_range(CUdeviceptr p, size_t bytes)
{
    pthread_mutex_lock(&lock);
    uintptr_t at = (uintptr_t)p, end = at + bytes;
    block_t *b = find_containing(at);
    while (b && b->kind == KIND_MAPPED && b->base + b->size < end)
        b = find_containing(b->base + b->size);
    bool ok = b && end <= b->base + b->size;
    pthread_mutex_unlock(&lock);
    return ok;
}

/* ---- virtual memory management (FAKECUDA_VMM=1) ---- */

#define GRANULARITY (2u << 20)
static struct {
    size_t size;
    int device;
    bool live, released;
    uintptr_t mapped_at; /* 0: not mapped */
} handles[1024];

FAKE_EXPORT CUresult cuDeviceCanAccessPeer(int *can, CUdevice device, CUdevice peer)
{
    ENTER(cuDeviceCanAccessPeer);
    if (can == NULL || device < 0 || device >= device_count || peer < 0 || peer >= device_count)
        return CUDA_ERROR_INVALID_VALUE;
    *can = device != peer;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity,
                                                   const CUmemAllocationProp *prop,
                                                   CUmemAllocationGranularity_flags option)
{
    ENTER(cuMemGetAllocationGranularity);
    (void)option;
    if (!vmm)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (granularity == NULL || prop == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *granularity = GRANULARITY;
    return CUDA_SUCCESS;
}

/* Inaccessible address space, aligned to the granularity. */
FAKE_EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                         CUdeviceptr addr, unsigned long long flags)
{
    ENTER(cuMemAddressReserve);
    (void)alignment, (void)addr, (void)flags;
    if (!vmm)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (ptr == NULL || size == 0 || size % GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    void *space = mmap(NULL, size + GRANULARITY, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (space == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *ptr = ((uintptr_t)space + GRANULARITY - 1) & ~(uintptr_t)(GRANULARITY - 1);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                 const CUmemAllocationProp *prop, unsigned long long flags)
{
    ENTER(cuMemCreate);
    (void)flags;
    if (!vmm)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (handle == NULL || prop == NULL || size == 0 || size % GRANULARITY ||
        prop->location.id < 0 || prop->location.id >= device_count)
        return CUDA_ERROR_INVALID_VALUE;
    int device = prop->location.id;
    pthread_mutex_lock(&lock);
    CUresult rc = CUDA_ERROR_OUT_OF_MEMORY;
    for (size_t i = 1; i < sizeof handles / sizeof handles[0]; i++)
        if (!handles[i].live && used[device] + size <= memory_per_device) {
            handles[i].size = size;
            handles[i].device = device;
            handles[i].live = true;
            handles[i].released = false;
            handles[i].mapped_at = 0;
            used[device] += size;
            *handle = i;
            rc = CUDA_SUCCESS;
            break;
        }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Memory goes once its handle is released and it is mapped nowhere (lock held). */
static void drop_if_unused(size_t h)
{
    if (handles[h].released && handles[h].mapped_at == 0) {
        handles[h].live = false;
        used[handles[h].device] -= handles[h].size;
    }
}

static bool live_handle(CUmemGenericAllocationHandle h)
{
    return h > 0 && h < sizeof handles / sizeof handles[0] && handles[h].live;
}

FAKE_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    ENTER(cuMemRelease);
    pthread_mutex_lock(&lock);
    CUresult rc =
        live_handle(handle) && !handles[handle].released ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        handles[handle].released = true;
        drop_if_unused(handle);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

FAKE_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                              CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    ENTER(cuMemMap);
    (void)flags;
    pthread_mutex_lock(&lock);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    size_t slot = 0;
    while (slot < MAX_BLOCKS && blocks[slot].base)
        slot++;
    if (live_handle(handle) && handles[handle].mapped_at == 0 && offset == 0 &&
        size == handles[handle].size && ptr % GRANULARITY == 0 && slot < MAX_BLOCKS &&
        find_containing((uintptr_t)ptr) == NULL &&
        mmap((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
        memset((void *)(uintptr_t)ptr, 0xA5, size); /* like real memory: not zeroed */
        static unsigned long long mappings_made;
        blocks[slot] = (block_t){(uintptr_t)ptr, size, handles[handle].device,
                                 KIND_MAPPED,    0,    (1ull << 40) + ++mappings_made};
        if (slot + 1 > high_water)
            high_water = slot + 1;
        handles[handle].mapped_at = (uintptr_t)ptr;
        rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Only whole mappings, as the driver; the range becomes inaccessible again. */
FAKE_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    ENTER(cuMemUnmap);
    pthread_mutex_lock(&lock);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    block_t *b = find_containing((uintptr_t)ptr);
    if (b && b->kind == KIND_MAPPED && b->base == (uintptr_t)ptr && b->size == size) {
        for (size_t h = 1; h < sizeof handles / sizeof handles[0]; h++)
            if (handles[h].live && handles[h].mapped_at == (uintptr_t)ptr) {
                handles[h].mapped_at = 0;
                drop_if_unused(h);
            }
        mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
             0);
        memset(b, 0, sizeof *b);
        rc = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

FAKE_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                                    size_t count)
{
    ENTER(cuMemSetAccess);
    if (desc == NULL || count == 0 || !live_range(ptr, size))
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++)
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc[i].location.id < 0 ||
            desc[i].location.id >= device_count)
            return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes)
{
    ENTER(cuMemcpyHtoD_v2);
    if (!live_range(dst, bytes))
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    memcpy((void *)(uintptr_t)dst, src, bytes);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes)
{
    ENTER(cuMemcpyDtoH_v2);
    if (!live_range(src, bytes))
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    memcpy(dst, (const void *)(uintptr_t)src, bytes);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t count)
{
    ENTER(cuMemsetD8_v2);
    if (!live_range(dst, count))
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    memset((void *)(uintptr_t)dst, value, count);
    return CUDA_SUCCESS;
}

/* A kernel launch does nothing here but check that its eleven arguments arrived intact (five
 * of them on the stack, past the shim's wrapper): the values fakecuda_launch_args() names. */
static CUresult launch_checked(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                               unsigned by, unsigned bz, unsigned shared, CUstream stream,
                               void **params, void **extra)
{
    if (f != (CUfunction)0xf00 || gx != 1 || gy != 2 || gz != 3 || bx != 4 || by != 5 || bz != 6 ||
        shared != 7 || stream != (CUstream)0x5008 || params != (void **)0x9009 ||
        extra != (void **)0xa00a)
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                    unsigned bx, unsigned by, unsigned bz, unsigned shared,
                                    CUstream stream, void **params, void **extra)
{
    ENTER(cuLaunchKernel);
    return launch_checked(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}

FAKE_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                         unsigned bx, unsigned by, unsigned bz, unsigned shared,
                                         CUstream stream, void **params, void **extra)
{
    ENTER(cuLaunchKernel_ptsz);
    return launch_checked(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra);
}

/* For the exit-from-a-library test. */
FAKE_EXPORT void fakecuda_exit(int status)
{
    exit(status);
}

/* ---- cuGetProcAddress, with the real driver's version and stream rules ---- */

enum { ANY, LEGACY, PER_THREAD };
typedef struct proc {
    const char *base;
    int since;
    int stream;
    void *fn;
} proc_t;

static CUresult fake_get_proc_v1(const char *, void **, int, cuuint64_t);
FAKE_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                         cuuint64_t flags, CUdriverProcAddressQueryResult *status);

static const proc_t procs[] = {
    {"cuInit", 2000, ANY, (void *)cuInit},
    {"cuDriverGetVersion", 2020, ANY, (void *)cuDriverGetVersion},
    {"cuDeviceGetCount", 2000, ANY, (void *)cuDeviceGetCount},
    {"cuDeviceGet", 2000, ANY, (void *)cuDeviceGet},
    {"cuDeviceTotalMem", 3020, ANY, (void *)cuDeviceTotalMem_v2},
    {"cuDeviceGetAttribute", 2000, ANY, (void *)cuDeviceGetAttribute},
    {"cuDevicePrimaryCtxRetain", 7000, ANY, (void *)cuDevicePrimaryCtxRetain},
    {"cuDevicePrimaryCtxReset", 11000, ANY, (void *)cuDevicePrimaryCtxReset_v2},
    {"cuDevicePrimaryCtxRelease", 11000, ANY, (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuDevicePrimaryCtxGetState", 7000, ANY, (void *)cuDevicePrimaryCtxGetState},
    {"cuCtxSetCurrent", 4000, ANY, (void *)cuCtxSetCurrent},
    {"cuCtxCreate", 3020, ANY, (void *)cuCtxCreate_v2},
    {"cuCtxDestroy", 4000, ANY, (void *)cuCtxDestroy_v2},
    {"cuCtxGetCurrent", 4000, ANY, (void *)cuCtxGetCurrent},
    {"cuCtxGetDevice", 2000, ANY, (void *)cuCtxGetDevice},
    {"cuCtxGetDevice", 13000, ANY, (void *)cuCtxGetDevice_v2},
    {"cuCtxSynchronize", 2000, ANY, (void *)cuCtxSynchronize},
    {"cuCtxSynchronize", 13000, ANY, (void *)cuCtxSynchronize_v2},
    {"cuMemAlloc", 3020, ANY, (void *)cuMemAlloc_v2},
    {"cuMemAllocPitch", 3020, ANY, (void *)cuMemAllocPitch_v2},
    {"cuMemFree", 3020, ANY, (void *)cuMemFree_v2},
    {"cuMemAllocManaged", 6000, ANY, (void *)cuMemAllocManaged},
    {"cuMemAllocAsync", 11020, LEGACY, (void *)cuMemAllocAsync},
    {"cuMemAllocAsync", 11020, PER_THREAD, (void *)cuMemAllocAsync_ptsz},
    {"cuMemFreeAsync", 11020, LEGACY, (void *)cuMemFreeAsync},
    {"cuMemFreeAsync", 11020, PER_THREAD, (void *)cuMemFreeAsync_ptsz},
    {"cuMemAllocFromPoolAsync", 11020, ANY, (void *)cuMemAllocFromPoolAsync},
    {"cuMemGetInfo", 3020, ANY, (void *)cuMemGetInfo_v2},
    {"cuMemGetAddressRange", 3020, ANY, (void *)cuMemGetAddressRange_v2},
    {"cuPointerGetAttribute", 4000, ANY, (void *)cuPointerGetAttribute},
    {"cuPointerGetAttributes", 7000, ANY, (void *)cuPointerGetAttributes},
    {"cuIpcGetMemHandle", 4010, ANY, (void *)cuIpcGetMemHandle},
    {"cuMemcpyHtoD", 3020, ANY, (void *)cuMemcpyHtoD_v2},
    {"cuMemcpyDtoH", 3020, ANY, (void *)cuMemcpyDtoH_v2},
    {"cuMemsetD8", 3020, ANY, (void *)cuMemsetD8_v2},
    {"cuMemPrefetchAsync", 12020, ANY, (void *)cuMemPrefetchAsync_v2},
    {"cuMemAdvise", 12020, ANY, (void *)cuMemAdvise_v2},
    {"cuMemRangeGetAttribute", 8000, ANY, (void *)cuMemRangeGetAttribute},
    {"cuMemHostAlloc", 2020, ANY, (void *)cuMemHostAlloc},
    {"cuMemAllocHost", 3020, ANY, (void *)cuMemAllocHost_v2},
    {"cuMemFreeHost", 2000, ANY, (void *)cuMemFreeHost},
    {"cuMemHostGetFlags", 2030, ANY, (void *)cuMemHostGetFlags},
    {"cuEventCreate", 2000, ANY, (void *)cuEventCreate},
    {"cuEventRecord", 2000, ANY, (void *)cuEventRecord},
    {"cuEventQuery", 2000, ANY, (void *)cuEventQuery},
    {"cuEventDestroy", 4000, ANY, (void *)cuEventDestroy_v2},
    {"cuStreamCreate", 2000, ANY, (void *)cuStreamCreate},
    {"cuStreamCreateWithPriority", 5050, ANY, (void *)cuStreamCreateWithPriority},
    {"cuStreamQuery", 2000, LEGACY, (void *)cuStreamQuery},
    {"cuStreamDestroy", 4000, ANY, (void *)cuStreamDestroy_v2},
    {"cuStreamBeginCapture", 10010, LEGACY, (void *)cuStreamBeginCapture_v2},
    {"cuStreamEndCapture", 10000, LEGACY, (void *)cuStreamEndCapture},
    {"cuLaunchKernel", 4000, LEGACY, (void *)cuLaunchKernel},
    {"cuLaunchKernel", 7000, PER_THREAD, (void *)cuLaunchKernel_ptsz},
    {"cuGetProcAddress", 11030, ANY, (void *)fake_get_proc_v1},
    {"cuGetProcAddress", 12000, ANY, (void *)cuGetProcAddress_v2},
};

static void *resolve(const char *symbol, int version, cuuint64_t flags, int *found_older)
{
    int stream = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? PER_THREAD : LEGACY;
    const proc_t *best = NULL;
    *found_older = 0;
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        if (strcmp(procs[i].base, symbol) != 0)
            continue;
        if (procs[i].since > version) {
            *found_older = 1;
            continue;
        }
        if (procs[i].stream != ANY && procs[i].stream != stream)
            continue;
        if (!best || procs[i].since > best->since)
            best = &procs[i];
    }
    return best ? best->fn : NULL;
}

FAKE_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                         cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    ENTER(cuGetProcAddress_v2);
    if (symbol == NULL || pfn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    int too_new;
    *pfn = resolve(symbol, version, flags, &too_new);
    if (status)
        *status = *pfn      ? CU_GET_PROC_ADDRESS_SUCCESS
                  : too_new ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                            : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_SUCCESS; /* measured: an unknown symbol answers success with *pfn = NULL */
}

static CUresult fake_get_proc_v1(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    ENTER(cuGetProcAddress);
    int too_new;
    if (symbol == NULL || pfn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = resolve(symbol, version, flags, &too_new);
    return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    return fake_get_proc_v1(symbol, pfn, version, flags);
}
