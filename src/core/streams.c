/* streams.c: what the shim must know about the program's streams.
 *
 * Non-blocking streams. Every other stream waits for the legacy default stream and the legacy
 * stream waits for them, so one event recorded there marks the end of all work issued before it;
 * work on a stream created CU_STREAM_NON_BLOCKING is not covered by it. So the registry below
 * lists such streams per device (up to GS_STREAMS_MARKED, each with a slot for the backend's
 * state), and the pool's safe reuse marks each busy one with an event of its own. A non-blocking
 * stream it cannot mark (one more than the registry holds, a green context's) makes
 * gs_streams_unmarkable() true for good, and the pool falls back to device synchronizations. A
 * marked stream the program destroys may still have work queued: the backend records a last
 * event on it first (stream_destroying), under the registry lock, so no mark can be recorded on
 * a stream that is going away.
 *
 * Stream capture (CUDA graphs): counted from just before a capture begins (so no synchronization
 * of ours can slip in between) until the driver says it ended, also when it ended invalidated.
 * While any stream captures, a device synchronization or work on the legacy stream would
 * invalidate the capture (measured), so the backends make none (gs_capturing). A capture the
 * shim did not see begin is not counted below zero. */
#include "gs.h"

#include <pthread.h>

/* Each costs a stream query per mark (1.3 us measured on an H200), and an event where work is
 * queued. PyTorch makes 32 per priority level at its first side stream: marking those 128 made
 * its training loop 1.4x slower than synchronizing, so such programs are left to the latter. */
#define GS_STREAMS_MARKED 16

typedef struct marked_stream {
    CUstream stream;
    int device;
    void *slot; /* the backend's state for this stream (its event), or NULL */
} marked_stream_t;

static pthread_mutex_t gs_streams_lock = PTHREAD_MUTEX_INITIALIZER;
static marked_stream_t gs_marked[GS_STREAMS_MARKED];
static int gs_marked_count;
static atomic_bool gs_unmarkable;
static atomic_int gs_captures;

bool gs_streams_unmarkable(void)
{
    return atomic_load_explicit(&gs_unmarkable, memory_order_acquire);
}

int gs_streams_each(int device, int (*fn)(void *ctx, CUstream stream, void **slot), void *ctx)
{
    int rc = 0;
    pthread_mutex_lock(&gs_streams_lock);
    for (int i = 0; i < gs_marked_count && rc == 0; i++)
        if (gs_marked[i].device == device)
            rc = fn(ctx, gs_marked[i].stream, &gs_marked[i].slot);
    pthread_mutex_unlock(&gs_streams_lock);
    return rc;
}

/* After the driver made a stream: a non-blocking one joins the registry, or, if it cannot, makes
 * marking by events impossible from now on. */
static CUresult created(CUresult rc, CUstream *stream, unsigned int flags, bool green)
{
    if (rc != CUDA_SUCCESS || !(flags & CU_STREAM_NON_BLOCKING))
        return rc;
    int device = gs_current_device();
    pthread_mutex_lock(&gs_streams_lock);
    if (green || gs_marked_count == GS_STREAMS_MARKED)
        atomic_store_explicit(&gs_unmarkable, true, memory_order_seq_cst);
    else
        gs_marked[gs_marked_count++] =
            (marked_stream_t){.stream = *stream, .device = device, .slot = NULL};
    pthread_mutex_unlock(&gs_streams_lock);
    return rc;
}

CUresult gs_stream_create(CUstream *stream, unsigned int flags)
{
    return created(GS_RAW(stream_create, stream, flags), stream, flags, false);
}

CUresult gs_stream_create_with_priority(CUstream *stream, unsigned int flags, int priority)
{
    return created(GS_RAW(stream_create_with_priority, stream, flags, priority), stream, flags,
                   false);
}

CUresult gs_green_ctx_stream_create(CUstream *stream, CUgreenCtx green_ctx, unsigned int flags,
                                    int priority)
{
    /* CUDA requires the non-blocking flag for these; their context is not the device's. */
    return created(GS_RAW(green_ctx_stream_create, stream, green_ctx, flags, priority), stream,
                   CU_STREAM_NON_BLOCKING, true);
}

CUresult gs_stream_destroy(CUstream stream, bool v2)
{
    const gs_backend_t *backend = gs_dispatch_backend();
    pthread_mutex_lock(&gs_streams_lock);
    for (int i = 0; i < gs_marked_count; i++) {
        if (gs_marked[i].stream != stream)
            continue;
        if (backend->stream_destroying)
            backend->stream_destroying(gs_marked[i].device, stream, &gs_marked[i].slot);
        gs_marked[i] = gs_marked[--gs_marked_count];
        break;
    }
    pthread_mutex_unlock(&gs_streams_lock);
    return v2 ? GS_RAW(stream_destroy_v2, stream) : GS_RAW(stream_destroy, stream);
}

/* The device's context is gone, and its streams and their events with it. */
void gs_streams_forget_device(int device)
{
    pthread_mutex_lock(&gs_streams_lock);
    for (int i = 0; i < gs_marked_count;)
        if (gs_marked[i].device == device)
            gs_marked[i] = gs_marked[--gs_marked_count];
        else
            i++;
    pthread_mutex_unlock(&gs_streams_lock);
}

void gs_streams_forget(void)
{
    pthread_mutex_init(&gs_streams_lock, NULL);
    gs_marked_count = 0;
    atomic_store(&gs_unmarkable, false);
    atomic_store(&gs_captures, 0);
}

/* ---- stream capture ------------------------------------------------------------------------ */

bool gs_capturing(void)
{
    return atomic_load_explicit(&gs_captures, memory_order_acquire) > 0;
}

static void capture_done(void)
{
    int n = atomic_load(&gs_captures);
    while (n > 0 && !atomic_compare_exchange_weak(&gs_captures, &n, n - 1)) {
    }
}

static CUresult capture_begun(CUresult rc)
{
    if (rc != CUDA_SUCCESS)
        capture_done();
    return rc;
}

CUresult gs_stream_begin_capture(CUstream stream, CUstreamCaptureMode mode, int variant,
                                 bool per_thread)
{
    atomic_fetch_add(&gs_captures, 1);
    if (variant == 1)
        return capture_begun(per_thread ? GS_RAW(stream_begin_capture_ptsz, stream)
                                        : GS_RAW(stream_begin_capture, stream));
    return capture_begun(per_thread ? GS_RAW(stream_begin_capture_v2_ptsz, stream, mode)
                                    : GS_RAW(stream_begin_capture_v2, stream, mode));
}

CUresult gs_stream_begin_capture_to_graph(CUstream stream, CUgraph graph,
                                          const CUgraphNode *dependencies,
                                          const CUgraphEdgeData *edge_data, size_t count,
                                          CUstreamCaptureMode mode, bool per_thread)
{
    atomic_fetch_add(&gs_captures, 1);
    return capture_begun(per_thread ? GS_RAW(stream_begin_capture_to_graph_ptsz, stream, graph,
                                             dependencies, edge_data, count, mode)
                                    : GS_RAW(stream_begin_capture_to_graph, stream, graph,
                                             dependencies, edge_data, count, mode));
}

CUresult gs_stream_end_capture(CUstream stream, CUgraph *graph, bool per_thread)
{
    CUresult rc = per_thread ? GS_RAW(stream_end_capture_ptsz, stream, graph)
                             : GS_RAW(stream_end_capture, stream, graph);
    if (rc == CUDA_SUCCESS || rc == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)
        capture_done(); /* other errors (wrong thread, not capturing) end no capture */
    return rc;
}
