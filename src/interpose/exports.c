/* exports.c: the driver entry points we intercept. Each one forwards into the core; the table
 * maps the names a program can look up (by dlsym, or cuGetProcAddress's base name, CUDA version
 * and stream flags) to these functions. Every other name passes through untouched. Of the
 * virtual-memory API only cuMemCreate and cuMemRelease are seen (GPUSHIM_DEVICE_LIMIT counts
 * them); explicit pools' allocations (cuMemAllocFromPoolAsync) pass through, counted. */
#include "gs.h"
#include "interpose.h"

#include <string.h>

#undef cuGetProcAddress /* cuda.h maps these to _v2; we define both */
#undef cuDevicePrimaryCtxReset
#undef cuDevicePrimaryCtxRelease
#undef cuStreamBeginCapture
#undef cuStreamDestroy
#undef cuCtxDestroy
#undef cuStreamBeginCaptureToGraph
#undef cuStreamEndCapture

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream stream);
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                      CUstream stream);
CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream);
CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags);
CUresult cuDevicePrimaryCtxReset(CUdevice device);
CUresult cuStreamDestroy(CUstream stream);
CUresult cuCtxDestroy(CUcontext ctx);
CUresult cuStreamBeginCapture(CUstream stream);
CUresult cuStreamBeginCapture_ptsz(CUstream stream);
CUresult cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode);
CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph graph,
                                          const CUgraphNode *dependencies,
                                          const CUgraphEdgeData *edge_data, size_t count,
                                          CUstreamCaptureMode mode);
CUresult cuStreamEndCapture_ptsz(CUstream stream, CUgraph *graph);
CUresult cuDevicePrimaryCtxRelease(CUdevice device);

GS_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes)
{
    return gs_mem_alloc(dptr, bytes);
}

GS_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                      unsigned int element_size)
{
    return gs_mem_alloc_pitch(dptr, pitch, width, height, element_size);
}

GS_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    return gs_mem_free(dptr);
}

GS_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytes, unsigned int flags)
{
    return gs_mem_alloc_managed(dptr, bytes, flags);
}

GS_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytes, CUstream stream)
{
    return gs_mem_alloc_async(dptr, bytes, stream, false);
}

GS_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream stream)
{
    return gs_mem_alloc_async(dptr, bytes, stream, true);
}

GS_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    return gs_mem_free_async(dptr, stream, false);
}

GS_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    return gs_mem_free_async(dptr, stream, true);
}

GS_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                           CUstream stream)
{
    return gs_mem_alloc_from_pool_async(dptr, bytes, pool, stream, false);
}

GS_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                                CUstream stream)
{
    return gs_mem_alloc_from_pool_async(dptr, bytes, pool, stream, true);
}

GS_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t bytes,
                               const CUmemAllocationProp *prop, unsigned long long flags)
{
    return gs_mem_create(handle, bytes, prop, flags);
}

GS_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    return gs_mem_release(handle);
}

GS_EXPORT CUresult cuMemHostAlloc(void **ptr, size_t bytes, unsigned int flags)
{
    return gs_mem_host_alloc(ptr, bytes, flags, false);
}

GS_EXPORT CUresult cuMemAllocHost_v2(void **ptr, size_t bytes)
{
    return gs_mem_host_alloc(ptr, bytes, 0, true);
}

GS_EXPORT CUresult cuMemFreeHost(void *ptr)
{
    return gs_mem_free_host(ptr);
}

GS_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    return gs_mem_get_info(free_bytes, total_bytes);
}

GS_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr dptr)
{
    return gs_mem_get_address_range(base, size, dptr);
}

GS_EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    return gs_pointer_get_attribute(data, attr, ptr);
}

GS_EXPORT CUresult cuPointerGetAttributes(unsigned int count, CUpointer_attribute *attrs,
                                          void **data, CUdeviceptr ptr)
{
    return gs_pointer_get_attributes(count, attrs, data, ptr);
}

GS_EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr dptr)
{
    return gs_ipc_get_mem_handle(handle, dptr);
}

GS_EXPORT CUresult cuCtxSynchronize(void)
{
    return gs_ctx_synchronize();
}

GS_EXPORT CUresult cuCtxSynchronize_v2(CUcontext ctx)
{
    return gs_ctx_synchronize_v2(ctx);
}

GS_EXPORT CUresult cuStreamCreate(CUstream *stream, unsigned int flags)
{
    return gs_stream_create(stream, flags);
}

GS_EXPORT CUresult cuStreamCreateWithPriority(CUstream *stream, unsigned int flags, int priority)
{
    return gs_stream_create_with_priority(stream, flags, priority);
}

GS_EXPORT CUresult cuGreenCtxStreamCreate(CUstream *stream, CUgreenCtx green_ctx,
                                          unsigned int flags, int priority)
{
    return gs_green_ctx_stream_create(stream, green_ctx, flags, priority);
}

GS_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice device)
{
    return gs_primary_ctx_reset(device, false);
}

GS_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice device)
{
    return gs_primary_ctx_reset(device, true);
}

GS_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice device)
{
    return gs_primary_ctx_release(device, false);
}

GS_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device)
{
    return gs_primary_ctx_release(device, true);
}

GS_EXPORT CUresult cuCtxDestroy(CUcontext ctx)
{
    return gs_ctx_destroy(ctx, false);
}

GS_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    return gs_ctx_destroy(ctx, true);
}

GS_EXPORT CUresult cuStreamDestroy(CUstream stream)
{
    return gs_stream_destroy(stream, false);
}

GS_EXPORT CUresult cuStreamDestroy_v2(CUstream stream)
{
    return gs_stream_destroy(stream, true);
}

GS_EXPORT CUresult cuStreamBeginCapture(CUstream stream)
{
    return gs_stream_begin_capture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL, 1, false);
}

GS_EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream stream)
{
    return gs_stream_begin_capture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL, 1, true);
}

GS_EXPORT CUresult cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode mode)
{
    return gs_stream_begin_capture(stream, mode, 2, false);
}

GS_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode)
{
    return gs_stream_begin_capture(stream, mode, 2, true);
}

GS_EXPORT CUresult cuStreamBeginCaptureToGraph(CUstream stream, CUgraph graph,
                                               const CUgraphNode *dependencies,
                                               const CUgraphEdgeData *edge_data, size_t count,
                                               CUstreamCaptureMode mode)
{
    return gs_stream_begin_capture_to_graph(stream, graph, dependencies, edge_data, count, mode,
                                            false);
}

GS_EXPORT CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph graph,
                                                    const CUgraphNode *dependencies,
                                                    const CUgraphEdgeData *edge_data, size_t count,
                                                    CUstreamCaptureMode mode)
{
    return gs_stream_begin_capture_to_graph(stream, graph, dependencies, edge_data, count, mode,
                                            true);
}

GS_EXPORT CUresult cuStreamEndCapture(CUstream stream, CUgraph *graph)
{
    return gs_stream_end_capture(stream, graph, false);
}

GS_EXPORT CUresult cuStreamEndCapture_ptsz(CUstream stream, CUgraph *graph)
{
    return gs_stream_end_capture(stream, graph, true);
}

/* cuGetProcAddress: ask the driver, then hand out our wrapper for what it resolved. Where the
 * driver finds nothing we return its answer unchanged (never a NULL we made up). */
GS_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                       cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    const gs_driver_t *drv = gs_driver();
    if (drv->get_proc_address_v2 == NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult rc = drv->get_proc_address_v2(symbol, pfn, version, flags, status);
    if (rc == CUDA_SUCCESS && symbol && pfn && *pfn && gs_depth == 0) {
        void *wrapper = gs_intercept_for_proc(symbol, version, flags);
        *pfn = wrapper ? wrapper : gs_work_wrap(symbol, *pfn, false);
    }
    return rc;
}

GS_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    const gs_driver_t *drv = gs_driver();
    if (drv->get_proc_address == NULL)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult rc = drv->get_proc_address(symbol, pfn, version, flags);
    if (rc == CUDA_SUCCESS && symbol && pfn && *pfn && gs_depth == 0) {
        void *wrapper = gs_intercept_for_proc(symbol, version, flags);
        *pfn = wrapper ? wrapper : gs_work_wrap(symbol, *pfn, false);
    }
    return rc;
}

/* Which variant cuGetProcAddress returns for a base name: the newest one whose version is at
 * most the caller's CUDA version (cudaTypedefs.h: PFN_<name>_v<version>), and for stream-taking
 * functions the _ptsz one when the per-thread default stream is asked for. */
enum { ANY_STREAM, LEGACY_STREAM, PER_THREAD_STREAM };

typedef struct gs_intercept {
    const char *base;
    const char *name;
    int since;
    int stream;
    void *wrapper;
} gs_intercept_t;

static const gs_intercept_t gs_intercepts[] = {
    {"cuMemAlloc", "cuMemAlloc_v2", 3020, ANY_STREAM, (void *)cuMemAlloc_v2},
    {"cuMemAllocPitch", "cuMemAllocPitch_v2", 3020, ANY_STREAM, (void *)cuMemAllocPitch_v2},
    {"cuMemFree", "cuMemFree_v2", 3020, ANY_STREAM, (void *)cuMemFree_v2},
    {"cuMemAllocManaged", "cuMemAllocManaged", 6000, ANY_STREAM, (void *)cuMemAllocManaged},
    {"cuMemAllocAsync", "cuMemAllocAsync", 11020, LEGACY_STREAM, (void *)cuMemAllocAsync},
    {"cuMemAllocAsync", "cuMemAllocAsync_ptsz", 11020, PER_THREAD_STREAM,
     (void *)cuMemAllocAsync_ptsz},
    {"cuMemFreeAsync", "cuMemFreeAsync", 11020, LEGACY_STREAM, (void *)cuMemFreeAsync},
    {"cuMemFreeAsync", "cuMemFreeAsync_ptsz", 11020, PER_THREAD_STREAM,
     (void *)cuMemFreeAsync_ptsz},
    {"cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync", 11020, LEGACY_STREAM,
     (void *)cuMemAllocFromPoolAsync},
    {"cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz", 11020, PER_THREAD_STREAM,
     (void *)cuMemAllocFromPoolAsync_ptsz},
    {"cuMemCreate", "cuMemCreate", 10020, ANY_STREAM, (void *)cuMemCreate},
    {"cuMemRelease", "cuMemRelease", 10020, ANY_STREAM, (void *)cuMemRelease},
    {"cuMemHostAlloc", "cuMemHostAlloc", 2020, ANY_STREAM, (void *)cuMemHostAlloc},
    {"cuMemAllocHost", "cuMemAllocHost_v2", 3020, ANY_STREAM, (void *)cuMemAllocHost_v2},
    {"cuMemFreeHost", "cuMemFreeHost", 2000, ANY_STREAM, (void *)cuMemFreeHost},
    {"cuMemGetInfo", "cuMemGetInfo_v2", 3020, ANY_STREAM, (void *)cuMemGetInfo_v2},
    {"cuMemGetAddressRange", "cuMemGetAddressRange_v2", 3020, ANY_STREAM,
     (void *)cuMemGetAddressRange_v2},
    {"cuPointerGetAttribute", "cuPointerGetAttribute", 4000, ANY_STREAM,
     (void *)cuPointerGetAttribute},
    {"cuPointerGetAttributes", "cuPointerGetAttributes", 7000, ANY_STREAM,
     (void *)cuPointerGetAttributes},
    {"cuIpcGetMemHandle", "cuIpcGetMemHandle", 4010, ANY_STREAM, (void *)cuIpcGetMemHandle},
    {"cuCtxSynchronize", "cuCtxSynchronize", 2000, ANY_STREAM, (void *)cuCtxSynchronize},
    {"cuCtxSynchronize", "cuCtxSynchronize_v2", 13000, ANY_STREAM, (void *)cuCtxSynchronize_v2},
    {"cuStreamCreate", "cuStreamCreate", 2000, ANY_STREAM, (void *)cuStreamCreate},
    {"cuStreamCreateWithPriority", "cuStreamCreateWithPriority", 5050, ANY_STREAM,
     (void *)cuStreamCreateWithPriority},
    {"cuGreenCtxStreamCreate", "cuGreenCtxStreamCreate", 12050, ANY_STREAM,
     (void *)cuGreenCtxStreamCreate},
    {"cuDevicePrimaryCtxReset", "cuDevicePrimaryCtxReset", 7000, ANY_STREAM,
     (void *)cuDevicePrimaryCtxReset},
    {"cuDevicePrimaryCtxReset", "cuDevicePrimaryCtxReset_v2", 11000, ANY_STREAM,
     (void *)cuDevicePrimaryCtxReset_v2},
    {"cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease", 7000, ANY_STREAM,
     (void *)cuDevicePrimaryCtxRelease},
    {"cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2", 11000, ANY_STREAM,
     (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuCtxDestroy", "cuCtxDestroy", 2000, ANY_STREAM, (void *)cuCtxDestroy},
    {"cuCtxDestroy", "cuCtxDestroy_v2", 4000, ANY_STREAM, (void *)cuCtxDestroy_v2},
    {"cuStreamDestroy", "cuStreamDestroy", 2000, ANY_STREAM, (void *)cuStreamDestroy},
    {"cuStreamDestroy", "cuStreamDestroy_v2", 4000, ANY_STREAM, (void *)cuStreamDestroy_v2},
    {"cuStreamBeginCapture", "cuStreamBeginCapture", 10000, LEGACY_STREAM,
     (void *)cuStreamBeginCapture},
    {"cuStreamBeginCapture", "cuStreamBeginCapture_ptsz", 10000, PER_THREAD_STREAM,
     (void *)cuStreamBeginCapture_ptsz},
    {"cuStreamBeginCapture", "cuStreamBeginCapture_v2", 10010, LEGACY_STREAM,
     (void *)cuStreamBeginCapture_v2},
    {"cuStreamBeginCapture", "cuStreamBeginCapture_v2_ptsz", 10010, PER_THREAD_STREAM,
     (void *)cuStreamBeginCapture_v2_ptsz},
    {"cuStreamBeginCaptureToGraph", "cuStreamBeginCaptureToGraph", 12030, LEGACY_STREAM,
     (void *)cuStreamBeginCaptureToGraph},
    {"cuStreamBeginCaptureToGraph", "cuStreamBeginCaptureToGraph_ptsz", 12030, PER_THREAD_STREAM,
     (void *)cuStreamBeginCaptureToGraph_ptsz},
    {"cuStreamEndCapture", "cuStreamEndCapture", 10000, LEGACY_STREAM, (void *)cuStreamEndCapture},
    {"cuStreamEndCapture", "cuStreamEndCapture_ptsz", 10000, PER_THREAD_STREAM,
     (void *)cuStreamEndCapture_ptsz},
    {"cuGetProcAddress", "cuGetProcAddress", 11030, ANY_STREAM, (void *)cuGetProcAddress},
    {"cuGetProcAddress", "cuGetProcAddress_v2", 12000, ANY_STREAM, (void *)cuGetProcAddress_v2},
};

#define GS_INTERCEPT_COUNT (sizeof gs_intercepts / sizeof gs_intercepts[0])

void *gs_intercept_by_name(const char *name)
{
    for (size_t i = 0; i < GS_INTERCEPT_COUNT; i++)
        if (strcmp(gs_intercepts[i].name, name) == 0)
            return gs_intercepts[i].wrapper;
    return NULL;
}

void *gs_intercept_for_proc(const char *symbol, int cuda_version, cuuint64_t flags)
{
    int stream =
        (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? PER_THREAD_STREAM : LEGACY_STREAM;
    const gs_intercept_t *best = NULL;
    for (size_t i = 0; i < GS_INTERCEPT_COUNT; i++) {
        const gs_intercept_t *e = &gs_intercepts[i];
        if (strcmp(e->base, symbol) != 0 || e->since > cuda_version)
            continue;
        if (e->stream != ANY_STREAM && e->stream != stream)
            continue;
        if (best == NULL || e->since > best->since)
            best = e;
    }
    return best ? best->wrapper : NULL;
}
