/* runtime_like.c: reaches the driver exactly the way the CUDA runtime (static or shared), CuPy
 * and JAX do: dlopen("libcuda.so.1"), dlsym(handle, "cuGetProcAddress_v2"), then cuGetProcAddress
 * for everything, cuGetProcAddress itself included. It never names a cu* symbol at link time.
 *
 * Usage: runtime_like SCENARIO [ARGS]   (see main). Prints results on stdout; exit 0 when the
 * scenario's own checks pass. */
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../bench/core_speed.h"

#undef cuGetProcAddress

typedef CUresult (*get_proc_fn)(const char *, void **, int, cuuint64_t,
                                CUdriverProcAddressQueryResult *);

static get_proc_fn get_proc;
static void *driver;

static struct {
    CUresult (*init)(unsigned int);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
    CUresult (*ctx_set_current)(CUcontext);
    CUresult (*mem_alloc)(CUdeviceptr *, size_t);
    CUresult (*mem_alloc_pitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
    CUresult (*mem_free)(CUdeviceptr);
    CUresult (*mem_alloc_managed)(CUdeviceptr *, size_t, unsigned int);
    CUresult (*mem_alloc_async)(CUdeviceptr *, size_t, CUstream);
    CUresult (*mem_alloc_async_ptsz)(CUdeviceptr *, size_t, CUstream);
    CUresult (*mem_free_async)(CUdeviceptr, CUstream);
    CUresult (*mem_free_async_ptsz)(CUdeviceptr, CUstream);
    CUresult (*mem_alloc_from_pool_async)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
    CUresult (*mem_get_info)(size_t *, size_t *);
    CUresult (*mem_get_address_range)(CUdeviceptr *, size_t *, CUdeviceptr);
    CUresult (*pointer_get_attribute)(void *, CUpointer_attribute, CUdeviceptr);
    CUresult (*pointer_get_attributes)(unsigned int, CUpointer_attribute *, void **, CUdeviceptr);
    CUresult (*ipc_get_mem_handle)(CUipcMemHandle *, CUdeviceptr);
    CUresult (*ctx_synchronize)(void);
    CUresult (*ctx_synchronize_v2)(CUcontext);
    CUresult (*memcpy_htod)(CUdeviceptr, const void *, size_t);
    CUresult (*memcpy_dtoh)(void *, CUdeviceptr, size_t);
    CUresult (*stream_create)(CUstream *, unsigned int);
    CUresult (*stream_create_with_priority)(CUstream *, unsigned int, int);
    CUresult (*memset_d8)(CUdeviceptr, unsigned char, size_t);
    CUresult (*primary_ctx_reset)(CUdevice);
    CUresult (*primary_ctx_release)(CUdevice);
    CUresult (*ctx_create)(CUcontext *, unsigned int, CUdevice);
    CUresult (*ctx_destroy)(CUcontext);
    CUresult (*stream_begin_capture)(CUstream, CUstreamCaptureMode);
    CUresult (*stream_end_capture)(CUstream, CUgraph *);
    CUresult (*mem_host_alloc)(void **, size_t, unsigned int);
    CUresult (*mem_alloc_host)(void **, size_t);
    CUresult (*mem_free_host)(void *);
    CUresult (*mem_host_get_flags)(unsigned int *, void *);
    CUresult (*mem_range_get_attribute)(void *, size_t, CUmem_range_attribute, CUdeviceptr, size_t);
} cu;

static void *proc(const char *name, int version, cuuint64_t flags)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult status;
    if (get_proc(name, &fn, version, flags, &status) != CUDA_SUCCESS || fn == NULL) {
        fprintf(stderr, "runtime_like: cuGetProcAddress(%s) failed\n", name);
        exit(3);
    }
    return fn;
}

static void load(void)
{
    driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!driver) {
        fprintf(stderr, "runtime_like: %s\n", dlerror());
        exit(3);
    }
    get_proc = (get_proc_fn)dlsym(driver, "cuGetProcAddress_v2");
    if (!get_proc)
        exit(3);
    get_proc = (get_proc_fn)proc("cuGetProcAddress", 13000, 0); /* the runtime does this too */
    const int v = 13000;
    cu.init = proc("cuInit", v, 0);
    cu.device_get = proc("cuDeviceGet", v, 0);
    cu.primary_ctx_retain = proc("cuDevicePrimaryCtxRetain", v, 0);
    cu.ctx_set_current = proc("cuCtxSetCurrent", v, 0);
    cu.mem_alloc = proc("cuMemAlloc", v, 0);
    cu.mem_alloc_pitch = proc("cuMemAllocPitch", v, 0);
    cu.mem_free = proc("cuMemFree", v, 0);
    cu.mem_alloc_managed = proc("cuMemAllocManaged", v, 0);
    cu.mem_alloc_async = proc("cuMemAllocAsync", v, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    cu.mem_alloc_async_ptsz =
        proc("cuMemAllocAsync", v, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    cu.mem_free_async = proc("cuMemFreeAsync", v, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    cu.mem_free_async_ptsz =
        proc("cuMemFreeAsync", v, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    cu.mem_alloc_from_pool_async = proc("cuMemAllocFromPoolAsync", v, 0);
    cu.mem_get_info = proc("cuMemGetInfo", v, 0);
    cu.mem_get_address_range = proc("cuMemGetAddressRange", v, 0);
    cu.pointer_get_attribute = proc("cuPointerGetAttribute", v, 0);
    cu.pointer_get_attributes = proc("cuPointerGetAttributes", v, 0);
    cu.ipc_get_mem_handle = proc("cuIpcGetMemHandle", v, 0);
    cu.ctx_synchronize = proc("cuCtxSynchronize", 12000, 0);
    cu.ctx_synchronize_v2 = proc("cuCtxSynchronize", 13000, 0);
    cu.memcpy_htod = proc("cuMemcpyHtoD", v, 0);
    cu.memcpy_dtoh = proc("cuMemcpyDtoH", v, 0);
    cu.stream_create = proc("cuStreamCreate", v, 0);
    cu.stream_create_with_priority = proc("cuStreamCreateWithPriority", v, 0);
    cu.memset_d8 = proc("cuMemsetD8", v, 0);
    cu.primary_ctx_reset = proc("cuDevicePrimaryCtxReset", v, 0);
    cu.primary_ctx_release = proc("cuDevicePrimaryCtxRelease", v, 0);
    cu.ctx_create = proc("cuCtxCreate", 3020, 0); /* the (pctx, flags, dev) signature */
    cu.ctx_destroy = proc("cuCtxDestroy", v, 0);
    cu.stream_begin_capture = proc("cuStreamBeginCapture", v, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    cu.stream_end_capture = proc("cuStreamEndCapture", v, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    cu.mem_host_alloc = proc("cuMemHostAlloc", v, 0);
    cu.mem_alloc_host = proc("cuMemAllocHost", v, 0);
    cu.mem_free_host = proc("cuMemFreeHost", v, 0);
    cu.mem_host_get_flags = proc("cuMemHostGetFlags", v, 0);
    cu.mem_range_get_attribute = proc("cuMemRangeGetAttribute", v, 0);
}

static void use_device(int ordinal)
{
    CUdevice dev;
    CUcontext ctx;
    if (cu.device_get(&dev, ordinal) || cu.primary_ctx_retain(&ctx, dev) ||
        cu.ctx_set_current(ctx)) {
        fprintf(stderr, "runtime_like: no device %d\n", ordinal);
        exit(3);
    }
}

static void start(void)
{
    load();
    if (cu.init(0) != CUDA_SUCCESS)
        exit(3);
    use_device(0);
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "runtime_like: check failed at line %d: %s\n", __LINE__, #cond);       \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

/* N allocations of (i+1) * 4 KiB, each written and read back, then all freed. */
static int scenario_basic(int n)
{
    CUdeviceptr *ptrs = calloc((size_t)n, sizeof *ptrs);
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)(i + 1) * 4096;
        CHECK(cu.mem_alloc(&ptrs[i], bytes) == CUDA_SUCCESS);
        CHECK(ptrs[i] % 256 == 0);
        unsigned char *host = malloc(bytes), *back = malloc(bytes);
        for (size_t j = 0; j < bytes; j++)
            host[j] = (unsigned char)(i * 31 + j);
        CHECK(cu.memcpy_htod(ptrs[i], host, bytes) == CUDA_SUCCESS);
        CHECK(cu.memcpy_dtoh(back, ptrs[i], bytes) == CUDA_SUCCESS);
        CHECK(memcmp(host, back, bytes) == 0);
        free(host);
        free(back);
    }
    for (int i = 0; i < n; i++)
        CHECK(cu.mem_free(ptrs[i]) == CUDA_SUCCESS);
    free(ptrs);
    printf("ok basic %d\n", n);
    return 0;
}

static int scenario_errors(void)
{
    CUdeviceptr p = 0;
    printf("free_zero %d\n", cu.mem_free(0));
    printf("free_unknown %d\n", cu.mem_free((CUdeviceptr)0x1000));
    CHECK(cu.mem_alloc(&p, 4096) == CUDA_SUCCESS);
    printf("free_first %d\n", cu.mem_free(p));
    printf("free_double %d\n", cu.mem_free(p));
    printf("alloc_null %d\n", cu.mem_alloc(NULL, 4096));
    printf("alloc_zero %d\n", cu.mem_alloc(&p, 0));
    return 0;
}

static int scenario_oom(int n)
{
    for (int i = 0; i < n; i++) {
        CUdeviceptr p;
        CUresult rc = cu.mem_alloc(&p, 1 << 20);
        printf("alloc %d %d\n", i + 1, rc);
        if (rc == CUDA_SUCCESS)
            CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    }
    return 0;
}

/* Every intercepted entry point once, results checked against what the driver would say. */
static int scenario_all(void)
{
    CUdeviceptr p, q, m, a, b, f;
    size_t pitch = 0;
    CHECK(cu.mem_alloc(&p, 1 << 20) == CUDA_SUCCESS);
    CHECK(cu.mem_alloc_pitch(&q, &pitch, 1000, 10, 4) == CUDA_SUCCESS);
    CHECK(pitch >= 1000 && pitch % 32 == 0 && q % 256 == 0);
    CHECK(cu.mem_alloc_managed(&m, 8192, CU_MEM_ATTACH_GLOBAL) == CUDA_SUCCESS);
    CHECK(cu.mem_alloc_async(&a, 4096, NULL) == CUDA_SUCCESS);
    CHECK(cu.mem_alloc_async_ptsz(&b, 4096, NULL) == CUDA_SUCCESS);
    CHECK(cu.mem_alloc_from_pool_async(&f, 4096, (CUmemoryPool)&f, NULL) == CUDA_SUCCESS); /* any pool: the fake has one */
    size_t free_bytes = 0, total = 0;
    CHECK(cu.mem_get_info(&free_bytes, &total) == CUDA_SUCCESS && free_bytes < total);
    CUdeviceptr base = 0;
    size_t size = 0;
    CHECK(cu.mem_get_address_range(&base, &size, p + 100) == CUDA_SUCCESS);
    CHECK(base == p && size == 1 << 20);
    CUdeviceptr start = 0;
    CHECK(cu.pointer_get_attribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + 8) ==
          CUDA_SUCCESS);
    CHECK(start == p);
    int managed = 0;
    size_t range = 0;
    CUpointer_attribute attrs[2] = {CU_POINTER_ATTRIBUTE_IS_MANAGED,
                                    CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    void *data[2] = {&managed, &range};
    CHECK(cu.pointer_get_attributes(2, attrs, data, m) == CUDA_SUCCESS && managed == 1 &&
          range == 8192);
    CUipcMemHandle handle;
    /* The pool refuses IPC of a block inside a chunk (its handle would map the whole chunk). */
    const char *mode = getenv("GPUSHIM_MODE");
    bool pooled = mode && strcmp(mode, "pool") == 0;
    CHECK(cu.ipc_get_mem_handle(&handle, p) == (pooled ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS));
    CHECK(cu.ipc_get_mem_handle(&handle, m) == CUDA_ERROR_INVALID_VALUE);
    CHECK(cu.ctx_synchronize() == CUDA_SUCCESS);
    CHECK(cu.ctx_synchronize_v2(NULL) == CUDA_SUCCESS);
    CHECK(cu.mem_free_async(a, NULL) == CUDA_SUCCESS);
    CHECK(cu.mem_free_async_ptsz(b, NULL) == CUDA_SUCCESS);
    CHECK(cu.mem_free_async(f, NULL) == CUDA_SUCCESS); /* from an explicit pool: passes through */
    CHECK(cu.mem_free(m) == CUDA_SUCCESS);
    CHECK(cu.mem_free(q) == CUDA_SUCCESS);
    CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    printf("ok all pitch %zu\n", pitch);
    return 0;
}

static int pairs_per_thread;

static void *thread_main(void *arg)
{
    (void)arg;
    use_device(0);
    for (int i = 0; i < pairs_per_thread; i++) {
        CUdeviceptr p;
        size_t bytes = (i & 1) ? (1 << 20) : 4096;
        CHECK(cu.mem_alloc(&p, bytes) == CUDA_SUCCESS);
        CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    }
    return NULL;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The benchmark's loop on the CPU (for profiling; no test asserts a time): batches of 20
 * alloc+free pairs of one size; prints the median and the mean ns a pair, and the core's speed
 * before and after (the host changes it: compare runs at one speed). */
static int scenario_pairs(int batches, int bytes)
{
    double lat_before, thr_before, lat_after, thr_after;
    core_speed(&lat_before, &thr_before);
    double *per_pair = calloc((size_t)batches, sizeof *per_pair);
    struct timespec start, t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int b = 0; b < batches; b++) {
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < 20; i++) {
            CUdeviceptr p;
            CHECK(cu.mem_alloc(&p, (size_t)bytes) == CUDA_SUCCESS);
            CHECK(cu.mem_free(p) == CUDA_SUCCESS);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        per_pair[b] =
            ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / 20;
    }
    double total = (double)(t1.tv_sec - start.tv_sec) * 1e9 + (double)(t1.tv_nsec - start.tv_nsec);
    qsort(per_pair, (size_t)batches, sizeof *per_pair, compare_doubles);
    core_speed(&lat_after, &thr_after);
    printf("ok pairs: %d B, median %.1f ns, mean %.1f ns a pair; core speed (latency, throughput) "
           "%.2f %.2f then %.2f %.2f ns a step\n",
           bytes, per_pair[batches / 2], total / ((double)batches * 20), lat_before, thr_before,
           lat_after, thr_after);
    free(per_pair);
    return 0;
}

/* Prints the pairs' wall time too (for profiling on the CPU; no test asserts a time). */
static int scenario_threads(int threads, int pairs)
{
    pthread_t tid[64];
    pairs_per_thread = pairs;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, thread_main, NULL);
    for (int i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("ok threads %d x %d\n", threads, pairs);
    printf("pairs took %.1f ns each (wall time / pairs per thread)\n", ns / pairs);
    return 0;
}

/* The child keeps running without CUDA (or execs); only the parent's report may appear. */
static int scenario_fork(const char *how)
{
    CUdeviceptr p;
    CHECK(cu.mem_alloc(&p, 4096) == CUDA_SUCCESS);
    pid_t pid = fork();
    if (pid == 0) {
        if (how && strcmp(how, "exec") == 0)
            execl("/bin/sh", "sh", "-c", "echo child-exec-ran", (char *)NULL);
        printf("child-ran\n");
        exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    printf("ok fork\n");
    return 0;
}

/* The child allocates first, then the parent: "n pairs" each (the trace of both must survive). */
static int scenario_fork_trace(int pairs)
{
    pid_t pid = fork();
    CUdeviceptr p;
    if (pid == 0) {
        for (int i = 0; i < pairs; i++) {
            CHECK(cu.mem_alloc(&p, 4096) == CUDA_SUCCESS);
            CHECK(cu.mem_free(p) == CUDA_SUCCESS);
        }
        exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < pairs; i++) {
        CHECK(cu.mem_alloc(&p, 8192) == CUDA_SUCCESS);
        CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    }
    printf("ok fork-trace\n");
    return 0;
}

/* Pairs in a loop (at most 10 s) until a signal ends the program: sig is sent by another thread
 * 50 ms in, as a scheduler would. own: the program handles SIGTERM itself first (exit 7). */
static int signal_number;

static void *send_signal(void *arg)
{
    (void)arg;
    usleep(50000);
    kill(getpid(), signal_number);
    return NULL;
}

static void own_handler(int sig)
{
    (void)sig;
    static const char text[] = "own handler ran\n";
    write(STDOUT_FILENO, text, sizeof text - 1);
    exit(7);
}

static int scenario_signal(const char *name)
{
    signal_number = name && strcmp(name, "INT") == 0    ? SIGINT
                    : name && strcmp(name, "HUP") == 0  ? SIGHUP
                    : name && strcmp(name, "XCPU") == 0 ? SIGXCPU
                                                        : SIGTERM;
    if (name && strcmp(name, "own") == 0)
        signal(SIGTERM, own_handler);
    CUdeviceptr p;
    CHECK(cu.mem_alloc(&p, 4096) == CUDA_SUCCESS);
    CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    pthread_t thread;
    pthread_create(&thread, NULL, send_signal, NULL);
    for (time_t end = time(NULL) + 10; time(NULL) < end;) {
        CHECK(cu.mem_alloc(&p, 4096) == CUDA_SUCCESS);
        CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    }
    printf("no signal came\n");
    return 3;
}

/* Threads allocate in loops (at most 10 s) while the main thread calls exit after 50 ms. */
static void *allocate_until_exit(void *arg)
{
    (void)arg;
    CUdeviceptr p;
    for (time_t end = time(NULL) + 10; time(NULL) < end;) {
        if (cu.mem_alloc(&p, 4096) == CUDA_SUCCESS)
            cu.mem_free(p);
    }
    return NULL;
}

static int scenario_exit_busy(int threads)
{
    CUdeviceptr p;
    CHECK(cu.mem_alloc(&p, 4096) == CUDA_SUCCESS);
    CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    for (int i = 0; i < threads; i++) {
        pthread_t thread;
        pthread_create(&thread, NULL, allocate_until_exit, NULL);
    }
    usleep(50000);
    exit(0);
}

static void *exit_from_thread(void *arg)
{
    (void)arg;
    printf("exiting from a thread\n");
    fflush(stdout);
    exit(0);
}

static int scenario_exit_thread(void)
{
    CUdeviceptr p;
    CHECK(cu.mem_alloc(&p, 8192) == CUDA_SUCCESS); /* left live: the report shows it */
    pthread_t tid;
    pthread_create(&tid, NULL, exit_from_thread, NULL);
    pthread_join(tid, NULL);
    return 1; /* not reached */
}

static int scenario_exit_library(void)
{
    CUdeviceptr p;
    CHECK(cu.mem_alloc(&p, 8192) == CUDA_SUCCESS);
    void (*lib_exit)(int) = (void (*)(int))dlsym(driver, "fakecuda_exit");
    CHECK(lib_exit != NULL);
    printf("exiting from a library\n");
    fflush(stdout);
    lib_exit(0);
    return 1;
}

static const char *owner(void *fn)
{
    Dl_info info;
    if (!dladdr(fn, &info) || !info.dli_fname)
        return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

/* Which library each lookup lands in: ours for intercepted names, the driver's for the rest. */
static int scenario_lookups(void)
{
    static const char *const names[] = {
        "cuMemAlloc",       "cuMemFree", "cuMemAllocAsync",         "cuGetProcAddress",
        "cuCtxSynchronize", "cuInit",    "cuMemAllocFromPoolAsync", "cuMemcpyHtoD"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        printf("proc %s %s\n", names[i], owner(proc(names[i], 13000, 0)));
    printf("proc cuMemAllocAsync/ptsz %s\n", owner(proc("cuMemAllocAsync", 13000, 2)));
    printf("dlsym cuMemAlloc_v2 %s\n", owner(dlsym(driver, "cuMemAlloc_v2")));
    printf("dlsym cuInit %s\n", owner(dlsym(driver, "cuInit")));
    printf("dlsym missing %s\n", dlsym(driver, "cuNoSuchFunction") ? "found" : "null");
    void *unknown = (void *)1;
    CUdriverProcAddressQueryResult status;
    CUresult rc = get_proc("cuNoSuchFunction", &unknown, 13000, 0, &status);
    printf("proc missing rc %d pfn %s status %d\n", rc, unknown ? "set" : "null", (int)status);
    return 0;
}

/* Two devices: a block allocated on device 1 is freed while device 0 is current. */
/* Safe reuse while the GPU is idle: after the program's own synchronization, with no work issued
 * since, a freed block comes back at once; after a launch that may use it, not before a mark or
 * synchronization. The launches are looked up with each stream flavour and by dlsym, and must
 * reach the driver with all eleven arguments (the fake checks them). */
void *early_launch(void); /* early_lookup.c, with GS_EARLY_LOOKUP=1 */

static int scenario_idle(void)
{
    typedef CUresult (*launch_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                  unsigned, unsigned, CUstream, void **, void **);
    launch_fn launches[4] = {
        (launch_fn)proc("cuLaunchKernel", 13000, CU_GET_PROC_ADDRESS_LEGACY_STREAM),
        (launch_fn)proc("cuLaunchKernel", 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM),
        (launch_fn)dlsym(driver, "cuLaunchKernel"), (launch_fn)early_launch()};
    int count = launches[3] ? 4 : 3; /* the last: looked up before the shim's constructor ran */
    const size_t big = 48u << 20;
    CUdeviceptr a, p, q;
    if (launches[2] == NULL || cu.mem_alloc(&a, big) || cu.mem_free(a) || cu.ctx_synchronize())
        return 1;
    int at_once = 0, after_launch = 0;
    for (int i = 0; i < 100; i++) {
        if (cu.mem_alloc(&p, big) || cu.mem_free(p))
            return 1;
        at_once += p == a;
    }
    for (int k = 0; k < count; k++) {
        if (cu.mem_alloc(&p, big))
            return 1;
        CUresult rc = launches[k]((CUfunction)0xf00, 1, 2, 3, 4, 5, 6, 7, (CUstream)0x5008,
                                  (void **)0x9009, (void **)0xa00a);
        if (rc != CUDA_SUCCESS) {
            printf("launch %d failed: %d\n", k, (int)rc);
            return 1;
        }
        if (cu.mem_free(p) || cu.mem_alloc(&q, big) || cu.mem_free(q) || cu.ctx_synchronize())
            return 1;
        after_launch += q == p;
    }
    printf("idle reused %d of 100; after a launch %d of %d\n", at_once, after_launch, count);
    return 0;
}

static int scenario_devices(void)
{
    CUdeviceptr on0, on1;
    CHECK(cu.mem_alloc(&on0, 4096) == CUDA_SUCCESS);
    use_device(1);
    CHECK(cu.mem_alloc(&on1, 1 << 20) == CUDA_SUCCESS);
    use_device(0);
    CHECK(cu.mem_free(on1) == CUDA_SUCCESS);
    CHECK(cu.mem_free(on0) == CUDA_SUCCESS);
    printf("ok devices\n");
    return 0;
}

/* N allocations of 16 MiB, each written and read back and checked for managed-ness; more than
 * the fake device holds when FAKECUDA_MEMORY is small. Then IPC and memory info. */
static int scenario_managed(int n)
{
    CUdeviceptr *ptrs = calloc((size_t)n, sizeof *ptrs);
    const size_t bytes = 16 << 20;
    for (int i = 0; i < n; i++) {
        CUresult rc = cu.mem_alloc(&ptrs[i], bytes);
        int managed = -1;
        if (rc == CUDA_SUCCESS) {
            CHECK(cu.pointer_get_attribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, ptrs[i]) ==
                  CUDA_SUCCESS);
            unsigned char pattern[4096], back[4096];
            memset(pattern, i + 1, sizeof pattern);
            CHECK(cu.memcpy_htod(ptrs[i] + bytes - sizeof pattern, pattern, sizeof pattern) ==
                  CUDA_SUCCESS);
            CHECK(cu.memcpy_dtoh(back, ptrs[i] + bytes - sizeof pattern, sizeof back) ==
                  CUDA_SUCCESS);
            CHECK(memcmp(pattern, back, sizeof back) == 0);
        } else {
            ptrs[i] = 0;
        }
        printf("alloc %d rc %d managed %d\n", i + 1, rc, managed);
    }
    size_t free_bytes = 0, total = 0;
    CHECK(cu.mem_get_info(&free_bytes, &total) == CUDA_SUCCESS);
    printf("info total %zu free %zu\n", total, free_bytes);
    if (ptrs[0]) {
        CUipcMemHandle handle;
        printf("ipc rc %d\n", cu.ipc_get_mem_handle(&handle, ptrs[0]));
    }
    for (int i = 0; i < n; i++)
        if (ptrs[i])
            CHECK(cu.mem_free(ptrs[i]) == CUDA_SUCCESS);
    free(ptrs);
    printf("ok managed\n");
    return 0;
}

/* Pairs of 48 MiB (past the thread cache, so freed blocks wait in the pool) after creating a
 * stream: "blocking", "nonblocking" (cuStreamCreate), "priority" (non-blocking, with a
 * priority) or "many" (17 non-blocking ones). */
static int scenario_streams(const char *kind, int pairs)
{
    CUstream stream;
    if (kind && strcmp(kind, "nonblocking") == 0)
        CHECK(cu.stream_create(&stream, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS);
    else if (kind && strcmp(kind, "many") == 0)
        for (int i = 0; i < 17; i++)
            CHECK(cu.stream_create(&stream, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS);
    else if (kind && strcmp(kind, "priority") == 0)
        CHECK(cu.stream_create_with_priority(&stream, CU_STREAM_NON_BLOCKING, -1) == CUDA_SUCCESS);
    else
        CHECK(cu.stream_create(&stream, CU_STREAM_DEFAULT) == CUDA_SUCCESS);
    for (int i = 0; i < pairs; i++) {
        CUdeviceptr p;
        CHECK(cu.mem_alloc(&p, 48u << 20) == CUDA_SUCCESS);
        CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    }
    printf("ok streams\n");
    return 0;
}

/* A stream-ordered free; with "sync", a device synchronization after it. */
static int scenario_managed_async(const char *how)
{
    CUdeviceptr p;
    CHECK(cu.mem_alloc_async(&p, 1 << 20, NULL) == CUDA_SUCCESS);
    CHECK(cu.mem_free_async(p, NULL) == CUDA_SUCCESS);
    if (how && strcmp(how, "sync") == 0)
        CHECK(cu.ctx_synchronize() == CUDA_SUCCESS);
    printf("ok managed-async\n");
    return 0;
}

/* A pipeline's temporaries, round after round: a large one, middling ones, a small one, each
 * written whole by the device (the fake refuses writes to memory that is not live), then freed;
 * the program synchronizes every fourth round. */
static int scenario_temporaries(int rounds)
{
    static const size_t sizes[] = {(24u << 20) + 100, 3u << 20, 200u << 10, 5u << 20};
    for (int r = 0; r < rounds; r++) {
        CUdeviceptr p[4];
        for (int i = 0; i < 4; i++) {
            CHECK(cu.mem_alloc(&p[i], sizes[i]) == CUDA_SUCCESS);
            CHECK(cu.memset_d8(p[i], (unsigned char)r, sizes[i]) == CUDA_SUCCESS);
        }
        for (int i = 0; i < 4; i++)
            CHECK(cu.mem_free(p[i]) == CUDA_SUCCESS);
        if (r % 4 == 3)
            CHECK(cu.ctx_synchronize() == CUDA_SUCCESS);
    }
    printf("ok temporaries\n");
    return 0;
}

/* Pinned host memory: pairs of cuMemHostAlloc (portable) and cuMemFreeHost, each buffer written
 * and its flags read back; then cuMemAllocHost pairs. Says whether every pair got the first
 * buffer back. */
static int scenario_host(int pairs)
{
    void *first = NULL, *p;
    int same = 1;
    unsigned int flags = 0;
    CHECK(cu.ctx_synchronize() == CUDA_SUCCESS);
    for (int i = 0; i < pairs; i++) {
        CHECK(cu.mem_host_alloc(&p, 65536, CU_MEMHOSTALLOC_PORTABLE) == CUDA_SUCCESS);
        memset(p, i, 65536);
        CHECK(cu.mem_host_get_flags(&flags, p) == CUDA_SUCCESS && flags == CU_MEMHOSTALLOC_PORTABLE);
        first = first ? first : p;
        same &= p == first;
        CHECK(cu.mem_free_host(p) == CUDA_SUCCESS);
    }
    for (int i = 0; i < pairs; i++) {
        CHECK(cu.mem_alloc_host(&p, 4096) == CUDA_SUCCESS);
        CHECK(cu.mem_host_get_flags(&flags, p) == CUDA_SUCCESS && flags == 0);
        CHECK(cu.mem_free_host(p) == CUDA_SUCCESS);
    }
    printf("host same %s\nok host\n", same ? "yes" : "no");
    return 0;
}

/* Two blocks of 48 MiB; where the end of the second is preferred and who accesses it, and what
 * cuMemGetInfo says (run under GPUSHIM_DEVICE_LIMIT). */
static int scenario_limit(void)
{
    CUdeviceptr a, b;
    CHECK(cu.mem_alloc(&a, 48u << 20) == CUDA_SUCCESS);
    CUresult second = cu.mem_alloc(&b, 48u << 20);
    size_t free_bytes = 0, total = 0;
    CHECK(cu.mem_get_info(&free_bytes, &total) == CUDA_SUCCESS);
    printf("second rc %d; info total %zu free %zu\n", second, total, free_bytes);
    if (second == CUDA_SUCCESS) {
        int where = 0, by[4] = {0};
        CHECK(cu.mem_range_get_attribute(&where, sizeof where, CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION,
                                         b + (47u << 20), 1u << 20) == CUDA_SUCCESS);
        CHECK(cu.mem_range_get_attribute(by, sizeof by, CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY,
                                         b + (47u << 20), 1u << 20) == CUDA_SUCCESS);
        int start = 0;
        CHECK(cu.mem_range_get_attribute(&start, sizeof start, CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION,
                                         a, 1u << 20) == CUDA_SUCCESS);
        CHECK(cu.memset_d8(b, 1, 48u << 20) == CUDA_SUCCESS);
        printf("past the limit: preferred %d accessed by %d; within: preferred %d\n", where, by[0], start);
        CHECK(cu.mem_free(b) == CUDA_SUCCESS);
    }
    CHECK(cu.mem_free(a) == CUDA_SUCCESS);
    printf("ok limit\n");
    return 0;
}

/* cudaDeviceReset's way ("reset", cuDevicePrimaryCtxReset) or the last release of the primary
 * context ("release"): blocks held, freed and cached before it; after it the same sizes again,
 * each written whole (the fake driver refuses writes to memory the reset freed), and a free of a
 * pointer from before, which the driver refuses. */
static int scenario_reset(const char *how)
{
    static const size_t sizes[] = {4096, 1 << 20, 48u << 20};
    CUdeviceptr held, freed[3], again[3];
    CHECK(cu.mem_alloc(&held, 4096) == CUDA_SUCCESS);
    for (int i = 0; i < 3; i++) {
        CHECK(cu.mem_alloc(&freed[i], sizes[i]) == CUDA_SUCCESS);
        CHECK(cu.memset_d8(freed[i], 1, sizes[i]) == CUDA_SUCCESS);
    }
    for (int i = 0; i < 3; i++)
        CHECK(cu.mem_free(freed[i]) == CUDA_SUCCESS);
    CUdevice dev;
    CHECK(cu.device_get(&dev, 0) == CUDA_SUCCESS);
    if (how && strcmp(how, "release") == 0)
        CHECK(cu.primary_ctx_release(dev) == CUDA_SUCCESS); /* start() retained it once */
    else
        CHECK(cu.primary_ctx_reset(dev) == CUDA_SUCCESS);
    use_device(0); /* the runtime makes the context current again */
    for (int i = 0; i < 3; i++) {
        CHECK(cu.mem_alloc(&again[i], sizes[i]) == CUDA_SUCCESS);
        CHECK(cu.memset_d8(again[i], 2, sizes[i]) == CUDA_SUCCESS);
    }
    printf("stale free rc %d\n", cu.mem_free(held));
    for (int i = 0; i < 3; i++)
        CHECK(cu.mem_free(again[i]) == CUDA_SUCCESS);
    printf("ok reset\n");
    return 0;
}

/* What a library asks before it caches a registration or shares memory by IPC: two allocations
 * in a row of the same size (a pool may give the second the first one's address), their buffer
 * IDs, ranges and mappings, and whether legacy IPC can share them. */
static int scenario_attributes(void)
{
    CUdeviceptr a, b;
    unsigned long long id_a = 0, id_b = 0;
    CHECK(cu.mem_alloc(&a, 4096) == CUDA_SUCCESS);
    CHECK(cu.pointer_get_attribute(&id_a, CU_POINTER_ATTRIBUTE_BUFFER_ID, a) == CUDA_SUCCESS);
    CHECK(cu.mem_free(a) == CUDA_SUCCESS);
    CHECK(cu.mem_alloc(&b, 4096) == CUDA_SUCCESS);
    CHECK(cu.pointer_get_attribute(&id_b, CU_POINTER_ATTRIBUTE_BUFFER_ID, b) == CUDA_SUCCESS);
    CUdeviceptr base = 0;
    size_t size = 0;
    int ipc = -1;
    CUpointer_attribute attrs[3] = {CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR,
                                    CU_POINTER_ATTRIBUTE_MAPPING_SIZE,
                                    CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE};
    void *data[3] = {&base, &size, &ipc};
    CHECK(cu.pointer_get_attributes(3, attrs, data, b + 100) == CUDA_SUCCESS);
    printf("same address %s; buffer ids %s; mapping base %s, size %zu; legacy ipc %d\n",
           a == b ? "yes" : "no", id_a != id_b ? "differ" : "equal", base == b ? "ok" : "wrong",
           size, ipc);
    CHECK(cu.mem_free(b) == CUDA_SUCCESS);
    printf("ok attributes\n");
    return 0;
}

/* A driver-API program's own context: blocks held, freed and cached in it; cuCtxDestroy frees
 * them all; in a new context the same sizes again, each written whole (the fake driver refuses
 * writes to memory a destroyed context held). */
static int scenario_context(void)
{
    static const size_t sizes[] = {4096, 1 << 20, 48u << 20};
    CUdevice dev;
    CUcontext ctx;
    CUdeviceptr held, freed[3], again[3];
    CHECK(cu.device_get(&dev, 0) == CUDA_SUCCESS);
    CHECK(cu.ctx_create(&ctx, 0, dev) == CUDA_SUCCESS);
    CHECK(cu.mem_alloc(&held, 4096) == CUDA_SUCCESS);
    for (int i = 0; i < 3; i++) {
        CHECK(cu.mem_alloc(&freed[i], sizes[i]) == CUDA_SUCCESS);
        CHECK(cu.memset_d8(freed[i], 1, sizes[i]) == CUDA_SUCCESS);
        CHECK(cu.mem_free(freed[i]) == CUDA_SUCCESS);
    }
    CHECK(cu.ctx_destroy(ctx) == CUDA_SUCCESS);
    CHECK(cu.ctx_create(&ctx, 0, dev) == CUDA_SUCCESS);
    for (int i = 0; i < 3; i++) {
        CHECK(cu.mem_alloc(&again[i], sizes[i]) == CUDA_SUCCESS);
        CHECK(cu.memset_d8(again[i], 2, sizes[i]) == CUDA_SUCCESS);
    }
    for (int i = 0; i < 3; i++)
        CHECK(cu.mem_free(again[i]) == CUDA_SUCCESS);
    CHECK(cu.ctx_destroy(ctx) == CUDA_SUCCESS);
    printf("ok context\n");
    return 0;
}

/* A CUDA graph captured on a stream ("blocking" or "nonblocking") while the program allocates, as
 * PyTorch's allocator does under capture: blocks freed before (pending under safe reuse), then
 * allocations during the capture. Whatever the shim does to serve them must not invalidate it. */
static int scenario_capture(const char *kind)
{
    CUstream stream;
    bool nonblocking = kind && strcmp(kind, "nonblocking") == 0;
    CHECK(cu.stream_create(&stream, nonblocking ? CU_STREAM_NON_BLOCKING : CU_STREAM_DEFAULT) ==
          CUDA_SUCCESS);
    for (int i = 0; i < 20; i++) {
        CUdeviceptr p;
        CHECK(cu.mem_alloc(&p, 48u << 20) == CUDA_SUCCESS);
        CHECK(cu.mem_free(p) == CUDA_SUCCESS);
    }
    CHECK(cu.stream_begin_capture(stream, CU_STREAM_CAPTURE_MODE_RELAXED) == CUDA_SUCCESS);
    CUdeviceptr held[8];
    for (int i = 0; i < 8; i++)
        CHECK(cu.mem_alloc(&held[i], 48u << 20) == CUDA_SUCCESS);
    CUgraph graph = NULL;
    printf("end capture rc %d\n", cu.stream_end_capture(stream, &graph));
    for (int i = 0; i < 8; i++)
        CHECK(cu.mem_free(held[i]) == CUDA_SUCCESS);
    printf("ok capture\n");
    return 0;
}

int main(int argc, char **argv)
{
    const char *scenario = argc > 1 ? argv[1] : "basic";
    int a = argc > 2 ? atoi(argv[2]) : 10;
    int b = argc > 3 ? atoi(argv[3]) : 1000;
    if (strcmp(scenario, "load-only") == 0) {
        load();
        printf("ok load-only\n");
        return 0;
    }
    start();
    if (strcmp(scenario, "basic") == 0)
        return scenario_basic(a);
    if (strcmp(scenario, "errors") == 0)
        return scenario_errors();
    if (strcmp(scenario, "oom") == 0)
        return scenario_oom(a);
    if (strcmp(scenario, "all") == 0)
        return scenario_all();
    if (strcmp(scenario, "threads") == 0)
        return scenario_threads(a, b);
    if (strcmp(scenario, "fork") == 0)
        return scenario_fork(argc > 2 ? argv[2] : NULL);
    if (strcmp(scenario, "exit-busy") == 0)
        return scenario_exit_busy(a);
    if (strcmp(scenario, "signal") == 0)
        return scenario_signal(argc > 2 ? argv[2] : NULL);
    if (strcmp(scenario, "fork-trace") == 0)
        return scenario_fork_trace(a);
    if (strcmp(scenario, "exit-thread") == 0)
        return scenario_exit_thread();
    if (strcmp(scenario, "exit-library") == 0)
        return scenario_exit_library();
    if (strcmp(scenario, "lookups") == 0)
        return scenario_lookups();
    if (strcmp(scenario, "idle") == 0)
        return scenario_idle();
    if (strcmp(scenario, "devices") == 0)
        return scenario_devices();
    if (strcmp(scenario, "managed") == 0)
        return scenario_managed(a);
    if (strcmp(scenario, "streams") == 0)
        return scenario_streams(argc > 2 ? argv[2] : NULL, argc > 3 ? b : 20);
    if (strcmp(scenario, "managed-async") == 0)
        return scenario_managed_async(argc > 2 ? argv[2] : NULL);
    if (strcmp(scenario, "attributes") == 0)
        return scenario_attributes();
    if (strcmp(scenario, "context") == 0)
        return scenario_context();
    if (strcmp(scenario, "capture") == 0)
        return scenario_capture(argc > 2 ? argv[2] : NULL);
    if (strcmp(scenario, "pairs") == 0)
        return scenario_pairs(a, b);
    if (strcmp(scenario, "temporaries") == 0)
        return scenario_temporaries(a);
    if (strcmp(scenario, "host") == 0)
        return scenario_host(a);
    if (strcmp(scenario, "limit") == 0)
        return scenario_limit();
    if (strcmp(scenario, "reset") == 0)
        return scenario_reset(argc > 2 ? argv[2] : NULL);
    fprintf(stderr, "runtime_like: unknown scenario %s\n", scenario);
    return 64;
}
