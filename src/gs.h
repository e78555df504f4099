/* gs.h: internal declarations shared by the core, the backends and the interposition layer.
 *
 * Layers (one file per subsystem):
 *   interpose/  the exported symbols (dlsym, cuGetProcAddress, cu*) and load/exit hooks: thin skin
 *   core/       dispatch (accounting around the backend), driver table, options, stats, report, log
 *   backends/   pass-through, pool, managed: all behind gs_backend_t
 *
 * Internal functions return 0 on success or a negative errno-style code. Functions that stand in
 * for a CUDA entry point return CUDA's own codes unchanged.
 */
#ifndef GS_H
#define GS_H

#include <cuda.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GS_EXPORT __attribute__((visibility("default")))
#define GS_TLS __thread __attribute__((tls_model("initial-exec")))
#define GS_MAX_DEVICES 32
#define GS_PATH_MAX 1024

/* ------------------------------------------------------------------------------------------ */
/* options.c: every GPUSHIM_* variable, declared once in a table                              */

typedef enum { GS_MODE_OFF, GS_MODE_POOL, GS_MODE_MANAGED } gs_mode_t;
typedef enum { GS_REPORT_STDERR, GS_REPORT_OFF, GS_REPORT_FILE } gs_report_kind_t;
typedef enum { GS_FORMAT_TEXT, GS_FORMAT_JSON } gs_report_format_t;
typedef enum { GS_REUSE_SAFE, GS_REUSE_IMMEDIATE } gs_reuse_t;
typedef enum { GS_EVENTS_AUTO, GS_EVENTS_OFF } gs_events_t;
typedef enum { GS_IDLE_REUSE_AUTO, GS_IDLE_REUSE_OFF } gs_idle_reuse_t;
typedef enum { GS_EXPANDABLE_AUTO, GS_EXPANDABLE_OFF } gs_expandable_t;
typedef enum { GS_ADVICE_NONE, GS_ADVICE_PREFERRED, GS_ADVICE_ACCESSED_BY } gs_advice_t;
typedef enum { GS_ON_OOM_FAIL, GS_ON_OOM_MANAGED } gs_on_oom_t;
typedef enum { GS_HOST_POOL_AUTO, GS_HOST_POOL_ON, GS_HOST_POOL_OFF } gs_host_pool_t;

/* A size given as bytes, or as a share (percent > 0) of the device's memory or, with of_host,
 * of the host's. */
typedef struct gs_size_spec {
    uint64_t bytes;
    double percent;
    bool of_host;
} gs_size_spec_t;

typedef struct gs_options {
    gs_mode_t mode;
    gs_report_kind_t report;
    char report_path[GS_PATH_MAX]; /* template: see gs_expand_path */
    gs_report_format_t report_format;
    char trace_path[GS_PATH_MAX]; /* empty: no trace */
    gs_size_spec_t pool_initial;
    gs_size_spec_t pool_max;
    gs_size_spec_t pool_chunk;
    gs_size_spec_t pool_pending_max;
    gs_size_spec_t pool_release_threshold;
    gs_reuse_t pool_reuse;
    gs_events_t pool_events;
    gs_idle_reuse_t pool_idle_reuse;
    gs_expandable_t pool_expandable;
    gs_on_oom_t on_oom;
    bool managed_prefetch;
    gs_advice_t managed_advice;
    gs_size_spec_t managed_limit;
    gs_size_spec_t device_limit;
    gs_host_pool_t host_pool;
} gs_options_t;

/* Parses the GPUSHIM_* entries of envp into *out (defaults first). On a bad or unknown variable
 * writes one line into err (no prefix, no newline) and returns -EINVAL. */
int gs_options_parse(char *const *envp, gs_options_t *out, char *err, size_t err_len);
/* The table's variables, in order (tests, tools). */
size_t gs_option_count(void);
const char *gs_option_name(size_t i);
/* Defaults only. */
void gs_options_defaults(gs_options_t *out);
/* Resolves a size spec against a device's total memory. */
uint64_t gs_size_resolve(gs_size_spec_t spec, uint64_t device_total);
/* Parses "512M", "2GiB", "10%", "50%host"... ; 0 or -EINVAL. */
int gs_parse_size(const char *text, gs_size_spec_t *out);
/* The options table rendered for people: markdown (README) or plain help text. */
void gs_options_describe(int fd, bool markdown);

/* The options in force, read once at load by gs_start(). */
extern gs_options_t gs_opts;

/* ------------------------------------------------------------------------------------------ */
/* log.c: messages, formatted on the stack and written with write(2): no allocation, no CUDA  */

void gs_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Capped: after a number of warnings the rest are counted, not printed. */
void gs_log_warning(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

typedef struct gs_buf {
    char data[65536];
    size_t len;
} gs_buf_t;
void gs_buf_printf(gs_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "0 B", "512 B", "4 KiB", "1.5 MiB": exact when the value is a whole number of the unit. */
const char *gs_format_bytes(uint64_t bytes, char out[32]);
/* Expands a path template: %p pid, %h host name, %r rank (RANK, OMPI_COMM_WORLD_RANK, PMI_RANK or
 * SLURM_PROCID; 0 without one), %% a percent sign. */
void gs_expand_path(const char *template, char *out, size_t out_len);
int gs_write_all(int fd, const char *data, size_t len);

/* output.c: the report's and the trace's files */
/* A value as messages show it: one line, control and non-ASCII bytes as \xNN, long ones cut. */
void gs_escape(const char *value, char *out, size_t len);
/* At start: the expanded path must name a file (a regular one, or none yet) in a writable folder;
 * else one line into err and -EINVAL. */
int gs_output_check(const char *variable, const char *template, char *err, size_t len);
/* Opens path for appending (truncated first if asked): no link followed, no FIFO waited for,
 * regular files only. The fd, or -1 after one warning naming the file and why. */
int gs_output_open(const char *path, bool truncate, const char *what);
/* Writes it all; the first failure (disk full) is said once per *warned. */
int gs_output_write(int fd, const char *data, size_t len, const char *what, atomic_bool *warned);
/* Raised privileges (AT_SECURE); and the options without any GPUSHIM_* path (true if one was
 * set). */
bool gs_secure_process(void);
bool gs_options_secure(gs_options_t *opts);

/* ------------------------------------------------------------------------------------------ */
/* clock.c: cheap tick counter for the per-call timing (rdtsc on x86-64)                      */

uint64_t gs_ticks(void);
uint64_t gs_now_ns(void);     /* CLOCK_MONOTONIC */
double gs_ticks_per_ns(void); /* calibrated against CLOCK_MONOTONIC; no CUDA call */
/* The same without waiting: over the time since gs_clock_start, or 0 if that is under min_ns. */
double gs_ticks_per_ns_since_start(uint64_t min_ns);
void gs_clock_start(void);
/* Seconds from gs_clock_start to a tick count, given a calibration from gs_ticks_per_ns. */
double gs_ticks_to_seconds(uint64_t ticks, double ticks_per_ns);
/* Wall-clock nanoseconds since the epoch at a tick count (for traces). */
uint64_t gs_ticks_to_epoch_ns(uint64_t ticks, double ticks_per_ns);

/* ------------------------------------------------------------------------------------------ */
/* driver.c: the real driver's entry points, loaded lazily from libcuda.so.1                  */

#define GS_DRIVER_FUNCS(X)                                                                         \
    X(mem_alloc, "cuMemAlloc_v2", CUresult (*)(CUdeviceptr *, size_t))                             \
    X(mem_alloc_pitch, "cuMemAllocPitch_v2",                                                       \
      CUresult (*)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int))                         \
    X(mem_free, "cuMemFree_v2", CUresult (*)(CUdeviceptr))                                         \
    X(mem_alloc_managed, "cuMemAllocManaged", CUresult (*)(CUdeviceptr *, size_t, unsigned int))   \
    X(mem_alloc_async, "cuMemAllocAsync", CUresult (*)(CUdeviceptr *, size_t, CUstream))           \
    X(mem_alloc_async_ptsz, "cuMemAllocAsync_ptsz", CUresult (*)(CUdeviceptr *, size_t, CUstream)) \
    X(mem_free_async, "cuMemFreeAsync", CUresult (*)(CUdeviceptr, CUstream))                       \
    X(mem_alloc_from_pool_async, "cuMemAllocFromPoolAsync",                                        \
      CUresult (*)(CUdeviceptr *, size_t, CUmemoryPool, CUstream))                                 \
    X(mem_alloc_from_pool_async_ptsz, "cuMemAllocFromPoolAsync_ptsz",                              \
      CUresult (*)(CUdeviceptr *, size_t, CUmemoryPool, CUstream))                                 \
    X(mem_host_alloc, "cuMemHostAlloc", CUresult (*)(void **, size_t, unsigned int))               \
    X(mem_alloc_host, "cuMemAllocHost_v2", CUresult (*)(void **, size_t))                          \
    X(mem_free_host, "cuMemFreeHost", CUresult (*)(void *))                                        \
    X(mem_free_async_ptsz, "cuMemFreeAsync_ptsz", CUresult (*)(CUdeviceptr, CUstream))             \
    X(mem_get_info, "cuMemGetInfo_v2", CUresult (*)(size_t *, size_t *))                           \
    X(mem_get_address_range, "cuMemGetAddressRange_v2",                                            \
      CUresult (*)(CUdeviceptr *, size_t *, CUdeviceptr))                                          \
    X(pointer_get_attribute, "cuPointerGetAttribute",                                              \
      CUresult (*)(void *, CUpointer_attribute, CUdeviceptr))                                      \
    X(pointer_get_attributes, "cuPointerGetAttributes",                                            \
      CUresult (*)(unsigned int, CUpointer_attribute *, void **, CUdeviceptr))                     \
    X(ipc_get_mem_handle, "cuIpcGetMemHandle", CUresult (*)(CUipcMemHandle *, CUdeviceptr))        \
    X(ctx_synchronize, "cuCtxSynchronize", CUresult (*)(void))                                     \
    X(ctx_synchronize_v2, "cuCtxSynchronize_v2", CUresult (*)(CUcontext))                          \
    X(ctx_get_device, "cuCtxGetDevice", CUresult (*)(CUdevice *))                                  \
    X(ctx_get_current, "cuCtxGetCurrent", CUresult (*)(CUcontext *))                               \
    X(ctx_destroy, "cuCtxDestroy", CUresult (*)(CUcontext))                                        \
    X(ctx_destroy_v2, "cuCtxDestroy_v2", CUresult (*)(CUcontext))                                  \
    X(ctx_get_device_v2, "cuCtxGetDevice_v2", CUresult (*)(CUdevice *, CUcontext))                 \
    X(device_get_attribute, "cuDeviceGetAttribute",                                                \
      CUresult (*)(int *, CUdevice_attribute, CUdevice))                                           \
    X(device_total_mem, "cuDeviceTotalMem_v2", CUresult (*)(size_t *, CUdevice))                   \
    X(device_get_count, "cuDeviceGetCount", CUresult (*)(int *))                                   \
    X(device_can_access_peer, "cuDeviceCanAccessPeer", CUresult (*)(int *, CUdevice, CUdevice))    \
    X(mem_address_reserve, "cuMemAddressReserve",                                                  \
      CUresult (*)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long))                \
    X(mem_create, "cuMemCreate",                                                                   \
      CUresult (*)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,            \
                   unsigned long long))                                                            \
    X(mem_release, "cuMemRelease", CUresult (*)(CUmemGenericAllocationHandle))                     \
    X(mem_map, "cuMemMap",                                                                         \
      CUresult (*)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long)) \
    X(mem_unmap, "cuMemUnmap", CUresult (*)(CUdeviceptr, size_t))                                  \
    X(mem_set_access, "cuMemSetAccess",                                                            \
      CUresult (*)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t))                          \
    X(mem_get_allocation_granularity, "cuMemGetAllocationGranularity",                             \
      CUresult (*)(size_t *, const CUmemAllocationProp *, CUmemAllocationGranularity_flags))       \
    X(mem_prefetch_async, "cuMemPrefetchAsync_v2",                                                 \
      CUresult (*)(CUdeviceptr, size_t, CUmemLocation, unsigned int, CUstream))                    \
    X(mem_advise, "cuMemAdvise_v2",                                                                \
      CUresult (*)(CUdeviceptr, size_t, CUmem_advise, CUmemLocation))                              \
    X(event_create, "cuEventCreate", CUresult (*)(CUevent *, unsigned int))                        \
    X(event_record, "cuEventRecord", CUresult (*)(CUevent, CUstream))                              \
    X(event_query, "cuEventQuery", CUresult (*)(CUevent))                                          \
    X(event_destroy, "cuEventDestroy_v2", CUresult (*)(CUevent))                                   \
    X(stream_create, "cuStreamCreate", CUresult (*)(CUstream *, unsigned int))                     \
    X(stream_create_with_priority, "cuStreamCreateWithPriority",                                   \
      CUresult (*)(CUstream *, unsigned int, int))                                                 \
    X(green_ctx_stream_create, "cuGreenCtxStreamCreate",                                           \
      CUresult (*)(CUstream *, CUgreenCtx, unsigned int, int))                                     \
    X(primary_ctx_reset, "cuDevicePrimaryCtxReset", CUresult (*)(CUdevice))                        \
    X(primary_ctx_reset_v2, "cuDevicePrimaryCtxReset_v2", CUresult (*)(CUdevice))                  \
    X(primary_ctx_release, "cuDevicePrimaryCtxRelease", CUresult (*)(CUdevice))                    \
    X(primary_ctx_release_v2, "cuDevicePrimaryCtxRelease_v2", CUresult (*)(CUdevice))              \
    X(primary_ctx_get_state, "cuDevicePrimaryCtxGetState",                                         \
      CUresult (*)(CUdevice, unsigned int *, int *))                                               \
    X(stream_query, "cuStreamQuery", CUresult (*)(CUstream))                                       \
    X(stream_destroy, "cuStreamDestroy", CUresult (*)(CUstream))                                   \
    X(stream_destroy_v2, "cuStreamDestroy_v2", CUresult (*)(CUstream))                             \
    X(stream_begin_capture, "cuStreamBeginCapture", CUresult (*)(CUstream))                        \
    X(stream_begin_capture_ptsz, "cuStreamBeginCapture_ptsz", CUresult (*)(CUstream))              \
    X(stream_begin_capture_v2, "cuStreamBeginCapture_v2",                                          \
      CUresult (*)(CUstream, CUstreamCaptureMode))                                                 \
    X(stream_begin_capture_v2_ptsz, "cuStreamBeginCapture_v2_ptsz",                                \
      CUresult (*)(CUstream, CUstreamCaptureMode))                                                 \
    X(stream_begin_capture_to_graph, "cuStreamBeginCaptureToGraph",                                \
      CUresult (*)(CUstream, CUgraph, const CUgraphNode *, const CUgraphEdgeData *, size_t,        \
                   CUstreamCaptureMode))                                                           \
    X(stream_begin_capture_to_graph_ptsz, "cuStreamBeginCaptureToGraph_ptsz",                      \
      CUresult (*)(CUstream, CUgraph, const CUgraphNode *, const CUgraphEdgeData *, size_t,        \
                   CUstreamCaptureMode))                                                           \
    X(stream_end_capture, "cuStreamEndCapture", CUresult (*)(CUstream, CUgraph *))                 \
    X(stream_end_capture_ptsz, "cuStreamEndCapture_ptsz", CUresult (*)(CUstream, CUgraph *))       \
    X(get_proc_address, "cuGetProcAddress", CUresult (*)(const char *, void **, int, cuuint64_t))  \
    X(get_proc_address_v2, "cuGetProcAddress_v2",                                                  \
      CUresult (*)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *))

typedef struct gs_driver {
#define GS_DRIVER_FIELD(field, symbol, type) __typeof__(type) field;
    GS_DRIVER_FUNCS(GS_DRIVER_FIELD)
#undef GS_DRIVER_FIELD
} gs_driver_t;

/* The real driver; loads libcuda.so.1 on first use. Never NULL; a missing entry point is NULL. */
const gs_driver_t *gs_driver(void);
/* The real driver library's handle (after gs_driver() has loaded it), or NULL. */
extern void *gs_driver_handle;
/* Unit tests install a fake upstream here. */
void gs_driver_override(const gs_driver_t *fake);
/* The real dlsym (libc's), found with dlvsym on first use. */
extern void *(*gs_real_dlsym)(void *, const char *);
void *(*gs_resolve_real_dlsym(void))(void *, const char *);

/* ------------------------------------------------------------------------------------------ */
/* stats.c: per-device counters, kept per thread so the hot path touches no shared cache line */

#define GS_HISTOGRAM_BUCKETS 48 /* bucket k: sizes in (2^(k-1), 2^k]; bucket 0: 0 and 1 byte */
#define GS_OOM_EVENTS 16        /* the latest out-of-memory events kept per device */

typedef struct gs_device_stats {
    uint64_t allocations, frees, failures, foreign_frees;
    uint64_t bytes_requested, bytes_freed;
    int64_t in_use, peak;
    uint64_t peak_ticks; /* when the peak was reached */
    uint64_t driver_calls, timed_calls, shim_ticks;
    uint64_t histogram[GS_HISTOGRAM_BUCKETS];
    /* Resets of the device's primary context (cudaDeviceReset), and the allocations the program
     * still held that they released (also counted as frees). */
    uint64_t resets, reset_released, reset_released_bytes;
} gs_device_stats_t;

typedef struct gs_oom_event {
    uint64_t bytes;
    uint64_t ticks;
} gs_oom_event_t;

void gs_stats_alloc(int device, uint64_t bytes);
void gs_stats_alloc_failed(int device);
void gs_stats_free(int device, uint64_t bytes);
void gs_stats_foreign_free(int device);
void gs_stats_driver_call(int device);
void gs_stats_time(int device, uint64_t shim_ticks);
/* An allocation the driver or the backend refused for lack of memory (slow path, locked). */
void gs_stats_oom(int device, uint64_t bytes);
/* The device's primary context was reset, releasing count live allocations of bytes in all. */
void gs_stats_context_reset(int device, uint64_t count, uint64_t bytes);
/* The latest out-of-memory events of a device, oldest first; returns how many. */
int gs_stats_oom_events(int device, gs_oom_event_t out[GS_OOM_EVENTS]);
/* Sums every thread's counters for one device. */
void gs_stats_snapshot(int device, gs_device_stats_t *out);
/* True once any allocation was attempted (decides whether a report is printed). */
bool gs_stats_active(void);
/* Forgets everything (fork child, tests). */
void gs_stats_reset(void);

/* ------------------------------------------------------------------------------------------ */
/* ptrmap.c: live allocations by base address (pass-through and managed backends)             */

typedef enum { GS_KIND_DEVICE, GS_KIND_PITCH, GS_KIND_MANAGED, GS_KIND_ASYNC } gs_alloc_kind_t;

typedef struct gs_block {
    CUdeviceptr base;
    uint64_t bytes;
    int device;
    gs_alloc_kind_t kind;
    void *owner; /* the backend's own record of the block (pool), or NULL */
    /* The previous allocation or free of this block's record was this thread's (pool only): the
     * trace may then time the event from the thread's last clock read, order per pointer kept. */
    bool same_thread;
} gs_block_t;

int gs_ptrmap_insert(const gs_block_t *block); /* 0, -ENOMEM, -EEXIST */
/* For a block the driver just handed out: an entry already at its address describes memory the
 * driver freed without our knowing (its context was destroyed): that one is replaced and
 * returned in *stale (stale->base == 0 if there was none), for the caller to count as freed.
 * 0 or -ENOMEM. */
int gs_ptrmap_insert_fresh(const gs_block_t *block, gs_block_t *stale);
int gs_ptrmap_find(CUdeviceptr base, gs_block_t *out);   /* 0 or -ENOENT */
int gs_ptrmap_remove(CUdeviceptr base, gs_block_t *out); /* 0 or -ENOENT */
size_t gs_ptrmap_count(void);
/* Calls fn for every entry (shard by shard, each under its lock; fn must not use the map). */
void gs_ptrmap_each(void (*fn)(void *ctx, const gs_block_t *block), void *ctx);
/* Removes every entry of a device, calling fn for each first (under its shard's lock). */
void gs_ptrmap_drop_device(int device, void (*fn)(void *ctx, const gs_block_t *block), void *ctx);
void gs_ptrmap_clear(void);

/* ------------------------------------------------------------------------------------------ */
/* backend.h contract: pass-through, pool and managed implement the same table.              */

typedef struct gs_alloc_req {
    gs_alloc_kind_t kind;
    int device;
    size_t bytes;         /* DEVICE, MANAGED, ASYNC */
    size_t width, height; /* PITCH */
    unsigned int element_size;
    unsigned int managed_flags; /* MANAGED */
    CUstream stream;            /* ASYNC */
    bool per_thread_stream;     /* ASYNC: the _ptsz entry point was called */
    CUmemoryPool mem_pool;      /* ASYNC: cuMemAllocFromPoolAsync's pool (passed through) */
} gs_alloc_req_t;

typedef struct gs_free_req {
    bool stream_ordered; /* cuMemFreeAsync */
    CUstream stream;
    bool per_thread_stream;
} gs_free_req_t;

#define GS_NOT_OURS (-2) /* backend free/find: the pointer is not a live block of this backend */

typedef struct gs_backend {
    const char *name;
    /* Called once from the first intercepted call (driver loaded, CUDA in use). May be NULL. */
    void (*start)(void);
    /* Serves req. On success sets *ptr, *pitch (PITCH only) and *block (what the program got). */
    CUresult (*alloc)(const gs_alloc_req_t *req, CUdeviceptr *ptr, size_t *pitch,
                      gs_block_t *block);
    /* Frees a block it handed out: 0 with *result set and *block filled (block->base == 0: nothing
     * to count), or GS_NOT_OURS, and the core sends the call to the driver. */
    int (*free)(CUdeviceptr ptr, const gs_free_req_t *req, CUresult *result, gs_block_t *block);
    /* Optional express path for the commonest calls: cuMemAlloc and cuMemFree on device 0 of a
     * one-device process, not nested (dispatch.c). Each is the whole call, in one function: what
     * it serves without calling the driver or waiting for the GPU, it counts, traces and times
     * with core/express.h's inline helpers; anything else it hands, untouched, to
     * gs_mem_alloc_full / gs_mem_free_full. */
    CUresult (*express_mem_alloc)(CUdeviceptr *dptr, size_t bytes);
    CUresult (*express_mem_free)(CUdeviceptr ptr);
    /* Optional answers for pointers of its own; NULL or GS_NOT_OURS sends the call to the driver.
     */
    int (*mem_get_info)(size_t *free_bytes, size_t *total_bytes, CUresult *result);
    /* Device bytes it holds that the program could still get (kept for reuse), for
     * GPUSHIM_DEVICE_LIMIT's cuMemGetInfo. May be NULL. */
    uint64_t (*idle_bytes)(int device);
    int (*address_range)(CUdeviceptr ptr, CUdeviceptr *base, size_t *size, CUresult *result);
    int (*pointer_attribute)(void *data, CUpointer_attribute attr, CUdeviceptr ptr,
                             CUresult *result);
    int (*ipc_handle)(CUipcMemHandle *handle, CUdeviceptr ptr, CUresult *result);
    /* Around the program's own device synchronization: before_sync returns a token that
     * after_sync receives once the synchronization succeeded. Both may be NULL. */
    uint64_t (*before_sync)(int device);
    void (*after_sync)(int device, uint64_t token);
    /* Adds this backend's part of the exit report for one device: text lines, or (json) one
     * member `"name": {...},` of the device object. May be NULL. */
    void (*report)(int device, gs_buf_t *out, bool json);
    /* The bytes the program holds in a block of gs_ptrmap, 0 when it is not live (not handed
     * out, or freed). NULL: every entry is live with its recorded bytes. */
    uint64_t (*live_bytes)(const gs_block_t *block);
    /* The device's primary context was reset (cudaDeviceReset) or destroyed: the driver freed
     * every allocation on it, and gs_ptrmap no longer lists them. Forget them, so that nothing
     * freed is handed out again. May be NULL. */
    void (*device_reset)(int device);
    /* After cuCtxDestroy(ctx) succeeded: a device whose every allocation of this backend came
     * from ctx (the core then forgets it, as after a reset), or -1. May be NULL. */
    int (*context_destroyed)(CUcontext ctx);
    /* A marked non-blocking stream of the device (see gs_streams_each) is about to be destroyed;
     * slot holds the backend's event for it. Called under the stream registry's lock: take no
     * lock that is held while calling gs_streams_each. May be NULL. */
    void (*stream_destroying)(int device, CUstream stream, void **slot);
    /* After fork, in the child: forget the parent's device memory. May be NULL. */
    void (*forget)(void);
} gs_backend_t;

extern const gs_backend_t gs_backend_passthrough;
/* Pool mode, and managed mode: the same pool over managed memory (pool_managed.c). */
extern const gs_backend_t gs_backend_pool;
extern const gs_backend_t gs_backend_managed;
void gs_pool_destroy(void); /* tests: forget and free every host record */

/* ------------------------------------------------------------------------------------------ */
/* budget.c: GPUSHIM_DEVICE_LIMIT, device memory per process and device, in every mode        */

bool gs_budget_set(void);
uint64_t gs_budget_limit(int device); /* bytes; 0: no limit */
/* Charges device memory about to be taken: false (and nothing charged) past the limit. */
bool gs_budget_charge(int device, uint64_t bytes);
void gs_budget_uncharge(int device, uint64_t bytes);
/* Managed memory the shim takes: how many of bytes fit within the limit (charged; the rest is
 * counted as placed in host memory). All of them without a limit. */
uint64_t gs_budget_place(int device, uint64_t bytes);
void gs_budget_unplace(int device, uint64_t on_device, uint64_t on_host);
/* Under a limit: total = the limit, free at most what it leaves (idle: bytes the backend holds
 * that the program can still get). */
void gs_budget_mem_info(int device, size_t *free_bytes, size_t *total_bytes, uint64_t idle);
int gs_budget_handle_add(CUmemGenericAllocationHandle handle, int device, uint64_t bytes);
int gs_budget_handle_remove(CUmemGenericAllocationHandle handle, int *device, uint64_t *bytes);
void gs_budget_report(int device, gs_buf_t *out, bool json);
void gs_budget_forget(void);

/* ------------------------------------------------------------------------------------------ */
/* host_pool.c: GPUSHIM_HOST_POOL, pinned host memory kept for reuse                          */

bool gs_host_pool_on(void);
/* cuMemHostAlloc (alloc_host false) and cuMemAllocHost (true). */
CUresult gs_mem_host_alloc(void **ptr, size_t bytes, unsigned int flags, bool alloc_host);
CUresult gs_mem_free_host(void *ptr);
/* Range queries for a pooled host block: the program's size, not the rounded one. 0 if answered,
 * GS_NOT_OURS. */
int gs_host_pool_range(CUdeviceptr ptr, CUdeviceptr *base, size_t *size);
/* Around the program's device synchronizations (dispatch.c). */
uint64_t gs_host_pool_before_sync(void);
void gs_host_pool_after_sync(uint64_t token);
void gs_host_pool_report(gs_buf_t *out, bool json);
bool gs_host_pool_active(void);
void gs_host_pool_forget(void);
void gs_host_pool_destroy(void); /* tests: give everything back, free every record */

/* The backend for a mode. */
const gs_backend_t *gs_backend_for_mode(gs_mode_t mode);

/* ------------------------------------------------------------------------------------------ */
/* dispatch.c: what each intercepted entry point does (accounting around the backend).        */

/* Per-thread depth of shim calls: the driver may call back into symbols we export, or dlsym;
 * such nested calls go straight to the driver. Saved and restored around every core call. */
extern GS_TLS int gs_depth;
/* Ticks this thread spent inside the driver during the current call (subtracted from shim time). */
extern GS_TLS uint64_t gs_driver_ticks;

/* Calls the real driver's entry point, or answers CUDA_ERROR_NOT_SUPPORTED if it lacks one. */
#define GS_RAW(field, ...)                                                                         \
    (gs_driver()->field ? gs_driver()->field(__VA_ARGS__) : CUDA_ERROR_NOT_SUPPORTED)

/* Runs a driver call, counting it and its time for the device. */
#define GS_DRIVER_CALL(device, call)                                                               \
    __extension__({                                                                                \
        uint64_t gs_t0_ = gs_ticks();                                                              \
        CUresult gs_r_ = (call);                                                                   \
        gs_driver_ticks += gs_ticks() - gs_t0_;                                                    \
        gs_stats_driver_call(device);                                                              \
        gs_r_;                                                                                     \
    })

void gs_dispatch_use(const gs_backend_t *backend); /* tests; gs_start picks from the mode */
const gs_backend_t *gs_dispatch_backend(void);
int gs_current_device(void);
/* The process sees exactly one device (known once it has allocated). */
bool gs_single_device_process(void);

/* cuMemAllocPitch's own argument checks, then the pitch rounded up to align and its bytes. */
CUresult gs_pitch_layout(const gs_alloc_req_t *req, uint64_t align, size_t *pitch, uint64_t *bytes);

CUresult gs_mem_alloc(CUdeviceptr *dptr, size_t bytes);
CUresult gs_mem_alloc_pitch(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                            unsigned int element_size);
CUresult gs_mem_alloc_managed(CUdeviceptr *dptr, size_t bytes, unsigned int flags);
CUresult gs_mem_alloc_async(CUdeviceptr *dptr, size_t bytes, CUstream stream, bool per_thread);
CUresult gs_mem_free(CUdeviceptr ptr);
CUresult gs_mem_free_async(CUdeviceptr ptr, CUstream stream, bool per_thread);
CUresult gs_mem_alloc_from_pool_async(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool,
                                      CUstream stream, bool per_thread);
/* The program's own virtual-memory allocations, counted against GPUSHIM_DEVICE_LIMIT. */
CUresult gs_mem_create(CUmemGenericAllocationHandle *handle, size_t bytes,
                       const CUmemAllocationProp *prop, unsigned long long flags);
CUresult gs_mem_release(CUmemGenericAllocationHandle handle);
CUresult gs_mem_get_info(size_t *free_bytes, size_t *total_bytes);
CUresult gs_mem_get_address_range(CUdeviceptr *base, size_t *size, CUdeviceptr ptr);
CUresult gs_pointer_get_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr);
CUresult gs_pointer_get_attributes(unsigned int count, CUpointer_attribute *attrs, void **data,
                                   CUdeviceptr ptr);
CUresult gs_ipc_get_mem_handle(CUipcMemHandle *handle, CUdeviceptr ptr);
CUresult gs_ctx_synchronize(void);
CUresult gs_stream_create(CUstream *stream, unsigned int flags);
CUresult gs_stream_create_with_priority(CUstream *stream, unsigned int flags, int priority);
CUresult gs_green_ctx_stream_create(CUstream *stream, CUgreenCtx green_ctx, unsigned int flags,
                                    int priority);
CUresult gs_ctx_synchronize_v2(CUcontext ctx);
/* streams.c. Non-blocking streams, for the pool's safe reuse by events: whether one exists that
 * cannot be marked (true for good once it is); and the marked ones of a device, each with a slot
 * for the backend's event (fn runs under the registry's lock; a nonzero return stops the walk and
 * is returned). */
bool gs_streams_unmarkable(void);
int gs_streams_each(int device, int (*fn)(void *ctx, CUstream stream, void **slot), void *ctx);
CUresult gs_stream_destroy(CUstream stream, bool v2);
void gs_streams_forget_device(int device); /* its context is gone */
void gs_streams_forget(void); /* fork child (the parent's streams are not the child's), tests */
/* Stream capture (CUDA graphs). While any stream of the process is capturing, a device
 * synchronization or work on the legacy stream from the shim would invalidate the capture, so
 * the backends make none: gs_capturing() says so. variant: 1 for cuStreamBeginCapture (CUDA
 * 10.0, no mode), 2 for _v2; per_thread: the _ptsz entry point. */
CUresult gs_stream_begin_capture(CUstream stream, CUstreamCaptureMode mode, int variant,
                                 bool per_thread);
CUresult gs_stream_begin_capture_to_graph(CUstream stream, CUgraph graph,
                                          const CUgraphNode *dependencies,
                                          const CUgraphEdgeData *edge_data, size_t count,
                                          CUstreamCaptureMode mode, bool per_thread);
CUresult gs_stream_end_capture(CUstream stream, CUgraph *graph, bool per_thread);
bool gs_capturing(void);
/* work.c. Whether GPU work may be in flight on a device (see there): the wrappers of the driver's
 * work-issuing entry points call gs_work_enqueued after each call; the pool marks a device quiet
 * from a mark's or synchronization's token; gs_work_blind turns this off for good (work may be
 * issued where the shim cannot see it). */
void gs_work_enqueued(void);
void gs_work_quiet_from(int device, uint64_t token);
/* The token of the point that covers all work issued so far on the device, if nothing was
 * issued since; else false. Inline: every free under safe reuse asks. */
extern _Atomic uint64_t gs_quiet[GS_MAX_DEVICES];
static inline bool gs_work_quiet_token(int device, uint64_t *token)
{
    uint64_t word = atomic_load(&gs_quiet[device]);
    *token = word >> 1;
    return word & 1;
}
bool gs_work_watched(void);
/* Whether anything asks (the wrappers are installed only then). */
bool gs_work_wanted(void);
/* The pinned host pool's point, as gs_work_quiet_from and gs_work_quiet_token for a device. */
void gs_work_host_quiet_from(uint64_t token);
bool gs_work_host_quiet_token(uint64_t *token);
const char *gs_work_blind_reason(void);
void gs_work_blind(const char *why);
void gs_work_forget(void);
/* interpose/work.c counts the work-issuing functions it wraps, for the report. */
void gs_work_note_wrapper(void);
unsigned gs_work_wrapper_count(void);
/* cuDevicePrimaryCtxReset (cudaDeviceReset), cuDevicePrimaryCtxRelease and cuCtxDestroy: once
 * the driver has destroyed the context, the shim forgets every allocation it held. */
CUresult gs_primary_ctx_reset(CUdevice device, bool v2);
CUresult gs_ctx_destroy(CUcontext ctx, bool v2);
CUresult gs_primary_ctx_release(CUdevice device, bool v2);

/* ------------------------------------------------------------------------------------------ */
/* lifecycle.c + report.c                                                                     */

/* trace.c: GPUSHIM_TRACE, every allocation and free as CSV in RMM's logging format. */
enum { GS_TRACE_ALLOCATE, GS_TRACE_ALLOCATE_FAILURE, GS_TRACE_FREE };
extern bool gs_tracing;
/* same_thread: gs_block_t.same_thread (false when unsure). */
void gs_trace_record(int action, CUdeviceptr ptr, uint64_t bytes, CUstream stream,
                     bool same_thread);
void gs_trace_start(void);  /* at load, when tracing: who starts the file afresh */
void gs_trace_flush(void);  /* at exit: every thread's buffer */
void gs_trace_flush_after_signal(void); /* the same with bounded waits (another thread may hold a lock) */
void gs_trace_forget(void); /* fork child */

/* At load: read options (exit(1) on bad input), fork handlers. Touches no CUDA. */
/* Set once gs_start has read the options: a library's constructor may call CUDA before ours runs
 * (constructors of the program's libraries can run first), and then gs_opts are still zero. */
extern atomic_bool gs_started;
void gs_start(char *const *envp);
/* At the first CUDA call: handlers for SIGTERM, SIGINT, SIGHUP, SIGXCPU where the program has
 * none, that write the report and trace and end the program as the signal would have. */
void gs_signals_install(void);
/* At exit: the report, once. Touches no CUDA. */
void gs_finish(void);
/* Writes the report for every device that saw activity. */
void gs_report_render(gs_buf_t *out);
void gs_report_emit(void);

#endif
