/* floor.c: the benchmark's floor, not part of gpushim. Preloaded instead of the shim, it answers
 * cuMemAlloc/cuMemFree where the shim does (the entry points the CUDA runtime takes from
 * cuGetProcAddress) with the least an allocator can do: every allocation gets the same block, and
 * its free does nothing. So a cudaMalloc+cudaFree pair under it costs the CUDA runtime's own share
 * plus two calls: no allocator in the shim's place can be faster. gpu-bench.sh runs the pair
 * benchmark under it beside the shim, in the same call, so the runtime's share at that time is
 * known (issue 3 quotes 80 ns for such a bump allocator on an H200).
 *
 * Only for bench_alloc's single-threaded size loop: one block of FLOOR_BYTES, taken from the
 * driver at the first allocation; anything larger, and any other pointer's free, goes to the
 * driver. Lookups with RTLD_NEXT/RTLD_DEFAULT resolve relative to this library (a C wrapper, not
 * the shim's trampoline): the benchmark does not make any. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cuda.h>
#include <dlfcn.h>
#include <string.h>

#define FLOOR_BYTES (256ull << 20)
#define EXPORT __attribute__((visibility("default"))) /* builds with hidden by default too */

#undef cuGetProcAddress

typedef CUresult (*get_proc_fn)(const char *, void **, int, cuuint64_t,
                                CUdriverProcAddressQueryResult *);
static get_proc_fn real_get_proc;
static CUresult (*real_alloc)(CUdeviceptr *, size_t);
static CUresult (*real_free)(CUdeviceptr);
static CUdeviceptr block;

static void *(*real_dlsym(void))(void *, const char *)
{
    static void *(*real)(void *, const char *);
    if (real == NULL)
        real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (real == NULL)
        real = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    return real;
}

static CUresult floor_alloc(CUdeviceptr *dptr, size_t bytes)
{
    if (dptr == NULL || bytes == 0 || bytes > FLOOR_BYTES)
        return real_alloc(dptr, bytes);
    if (__builtin_expect(block == 0, 0)) {
        CUresult rc = real_alloc(&block, FLOOR_BYTES);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    *dptr = block;
    return CUDA_SUCCESS;
}

static CUresult floor_free(CUdeviceptr ptr)
{
    if (ptr != 0 && ptr == block)
        return CUDA_SUCCESS;
    return real_free(ptr);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status)
{
    CUresult rc = real_get_proc(symbol, pfn, version, flags, status);
    if (rc != CUDA_SUCCESS || symbol == NULL || pfn == NULL || *pfn == NULL)
        return rc;
    if (strcmp(symbol, "cuMemAlloc") == 0 && version >= 3020) {
        real_alloc = (CUresult(*)(CUdeviceptr *, size_t)) * pfn;
        *pfn = (void *)floor_alloc;
    } else if (strcmp(symbol, "cuMemFree") == 0 && version >= 3020) {
        real_free = (CUresult(*)(CUdeviceptr)) * pfn;
        *pfn = (void *)floor_free;
    } else if (strcmp(symbol, "cuGetProcAddress") == 0 && version >= 12000) { /* _v2 */
        *pfn = (void *)cuGetProcAddress_v2;
    }
    return rc;
}

EXPORT void *dlsym(void *handle, const char *name)
{
    void *symbol = real_dlsym()(handle, name);
    if (symbol && handle != RTLD_DEFAULT && handle != RTLD_NEXT &&
        strcmp(name, "cuGetProcAddress_v2") == 0) {
        real_get_proc = (get_proc_fn)symbol;
        return (void *)cuGetProcAddress_v2;
    }
    return symbol;
}
