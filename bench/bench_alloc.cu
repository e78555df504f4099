// bench_alloc.cu: allocation latency through the CUDA runtime, whatever backend is underneath
// (run it with and without the shim; scripts/gpu-bench.sh does all of that side by side).
//   bench_alloc sizes  API [SIZE] ns per alloc+free pair for 256 B .. 256 MiB (or SIZE alone):
//                                 median of 20-pair batches, the mean over all of them (syncs,
//                                 flushes included), and the core's speed (core_speed.h: latency
//                                 and throughput probes, ns a step)
//   bench_alloc busy   API        the same with a kernel launched on each block before its free
//                                 (work in flight at every free), for 4 KiB, 1 MiB and 256 MiB
//   bench_alloc random API        1000 live blocks, log-uniform 256 B..4 MiB, random free order
//                                 (async: also the pool's reserved high-water mark / peak asked)
//   bench_alloc threads API T     pairs per second of T threads together (4 KiB and 1 MiB)
//   bench_alloc host   API        ns per cudaMallocHost+cudaFreeHost pair (pinned host memory) for
//                                 4 KiB, 1 MiB and 64 MiB: median of single pairs, up to 0.5 s or
//                                 20000 pairs a size (API is ignored)
//   bench_alloc context API       what a device synchronization of an idle GPU costs, and a
//                                 CPU clock read (rdtsc), for reading the other numbers
// API is malloc (cudaMalloc/cudaFree), async (cudaMallocAsync/cudaFreeAsync, pool retained) or
// driver (cuMemAlloc_v2/cuMemFree_v2 straight from the driver's entry points).
// Lines starting with RESULT are machine-readable.
#include <cuda.h>
#include "core_speed.h"
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

using clk = std::chrono::steady_clock;
static bool use_async = false;
// API "driver": cuMemAlloc_v2/cuMemFree_v2 taken from the runtime's entry-point table (so, under
// the shim, our wrappers): the shim's cost without the runtime's own.
static CUresult (*driver_alloc)(CUdeviceptr *, size_t);
static CUresult (*driver_free)(CUdeviceptr);
static thread_local cudaStream_t stream = nullptr;

static void die(cudaError_t e, const char *what)
{
    std::printf("FAIL %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
}

static void *alloc(size_t bytes)
{
    if (driver_alloc) {
        CUdeviceptr d;
        if (driver_alloc(&d, bytes) != CUDA_SUCCESS)
            die(cudaErrorMemoryAllocation, "cuMemAlloc");
        return (void *)d;
    }
    void *p = nullptr;
    cudaError_t e = use_async ? cudaMallocAsync(&p, bytes, stream) : cudaMalloc(&p, bytes);
    if (e != cudaSuccess)
        die(e, "alloc");
    return p;
}

static void release(void *p)
{
    if (driver_free) {
        if (driver_free((CUdeviceptr)p) != CUDA_SUCCESS)
            die(cudaErrorInvalidValue, "cuMemFree");
        return;
    }
    cudaError_t e = use_async ? cudaFreeAsync(p, stream) : cudaFree(p);
    if (e != cudaSuccess)
        die(e, "free");
}

static void setup_stream()
{
    if (use_async)
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
}

static double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Takes the block, as a kernel that uses it would; does nothing.
__global__ void use_block(void *p)
{
    (void)p;
}

// only: one size instead of the list (0: the list), for short runs that alternate quickly.
static void sizes(bool busy, size_t only)
{
    const size_t all[] = {256, 4096, 65536, 1 << 20, 16 << 20, 256 << 20};
    const size_t some[] = {4096, 1 << 20, 256 << 20};
    std::vector<size_t> list = only   ? std::vector<size_t>(1, only)
                               : busy ? std::vector<size_t>(some, some + 3)
                                      : std::vector<size_t>(all, all + 6);
    auto pair = [&](size_t bytes) {
        void *p = alloc(bytes);
        if (busy)
            use_block<<<1, 1, 0, stream>>>(p);
        release(p);
    };
    // A warm-up pass over every size first (600 ms in all, however many sizes, not measured):
    // the first size measured must not pay for clocks ramping up, first synchronizations, the
    // pool's first chunks, or the driver's own work after start-up.
    const auto warm = std::chrono::milliseconds(600 / list.size());
    for (size_t bytes : list)
        for (auto end = clk::now() + warm; clk::now() < end;)
            pair(bytes);
    for (size_t bytes : list) {
        pair(bytes); // warm: chunk, pool, context
        double lat_before, thr_before, lat_after, thr_after;
        core_speed(&lat_before, &thr_before);
        std::vector<double> per_pair;
        const int batch = 20;
        auto start = clk::now(), deadline = start + std::chrono::milliseconds(300);
        while ((per_pair.size() < 50 || clk::now() < deadline) && per_pair.size() < 20000) {
            auto t0 = clk::now();
            for (int i = 0; i < batch; i++)
                pair(bytes);
            auto t1 = clk::now();
            per_pair.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / batch);
        }
        double mean = std::chrono::duration<double, std::nano>(clk::now() - start).count() /
                      (double)(per_pair.size() * batch);
        core_speed(&lat_after, &thr_after);
        std::printf("RESULT %s %zu %.0f %.0f %.2f %.2f\n", busy ? "busy" : "sizes", bytes,
                    median(per_pair), mean, (lat_before + lat_after) / 2,
                    (thr_before + thr_after) / 2);
    }
}

static void random_pattern()
{
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<double> logsize(std::log(256.0), std::log(4.0 * 1024 * 1024));
    auto draw = [&] { return (size_t)std::exp(logsize(rng)); };
    std::vector<void *> live(1000);
    std::vector<size_t> live_size(1000);
    size_t in_use = 0, peak = 0;
    for (int i = 0; i < 1000; i++) {
        live_size[i] = draw();
        live[i] = alloc(live_size[i]);
        in_use += live_size[i];
    }
    peak = in_use;
    const int pairs = 20000, batch = 20;
    std::vector<double> per_pair;
    std::uniform_int_distribution<int> pick(0, 999);
    for (int b = 0; b < pairs / batch; b++) {
        auto t0 = clk::now();
        for (int i = 0; i < batch; i++) {
            int k = pick(rng);
            release(live[k]);
            in_use -= live_size[k];
            live_size[k] = draw();
            live[k] = alloc(live_size[k]);
            in_use += live_size[k];
            peak = std::max(peak, in_use);
        }
        auto t1 = clk::now();
        per_pair.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / batch);
    }
    for (void *p : live)
        release(p);
    std::printf("RESULT random %.0f peak_requested %zu\n", median(per_pair), peak);
    if (use_async) { // CUDA's own pool on the same pattern: what it reserved at most
        cudaMemPool_t mempool;
        cuuint64_t reserved = 0, used = 0;
        cudaDeviceGetDefaultMemPool(&mempool, 0);
        cudaMemPoolGetAttribute(mempool, cudaMemPoolAttrReservedMemHigh, &reserved);
        cudaMemPoolGetAttribute(mempool, cudaMemPoolAttrUsedMemHigh, &used);
        std::printf("RESULT random_pool reserved_high %llu used_high %llu ratio %.3f\n",
                    (unsigned long long)reserved, (unsigned long long)used, (double)reserved / peak);
    }
}

static void threads(int count)
{
    std::atomic<bool> go{false}, stop{false};
    std::atomic<uint64_t> total{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < count; t++) {
        pool.emplace_back([&] {
            setup_stream();
            cudaFree(0);
            uint64_t pairs = 0;
            while (!go.load())
                ;
            while (!stop.load(std::memory_order_relaxed)) {
                for (int i = 0; i < 64; i++)
                    release(alloc((pairs + i) & 1 ? (1 << 20) : 4096));
                pairs += 64;
            }
            total += pairs;
        });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto t0 = clk::now();
    go = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    stop = true;
    for (auto &t : pool)
        t.join();
    double seconds = std::chrono::duration<double>(clk::now() - t0).count();
    std::printf("RESULT threads %d %.0f\n", count, total.load() / seconds);
}

static void host()
{
    for (size_t bytes : {size_t(4096), size_t(1) << 20, size_t(64) << 20}) {
        std::vector<double> ns;
        void *p = nullptr;
        for (int i = 0; i < 2; i++) { // warm-up
            if (cudaMallocHost(&p, bytes) != cudaSuccess)
                die(cudaErrorMemoryAllocation, "cudaMallocHost");
            static_cast<char *>(p)[0] = 1;
            cudaFreeHost(p);
        }
        auto begin = clk::now();
        while (ns.size() < 20000 && clk::now() - begin < std::chrono::milliseconds(500)) {
            auto t0 = clk::now();
            cudaError_t e = cudaMallocHost(&p, bytes);
            if (e != cudaSuccess)
                die(e, "cudaMallocHost");
            e = cudaFreeHost(p);
            if (e != cudaSuccess)
                die(e, "cudaFreeHost");
            ns.push_back(std::chrono::duration<double, std::nano>(clk::now() - t0).count());
        }
        std::printf("RESULT host %zu %.0f pairs %zu\n", bytes, median(ns), ns.size());
    }
}

static void context()
{
    std::vector<double> ns;
    for (int i = 0; i < 2000; i++) {
        auto t0 = clk::now();
        cudaDeviceSynchronize();
        ns.push_back(std::chrono::duration<double, std::nano>(clk::now() - t0).count());
    }
    std::printf("RESULT idle_sync_ns %.0f\n", median(ns));
    uint64_t sum = 0;
    auto t0 = clk::now();
    for (int i = 0; i < 10000000; i++) {
        unsigned lo, hi;
        asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
        sum += lo + ((uint64_t)hi << 32);
    }
    double per = std::chrono::duration<double, std::nano>(clk::now() - t0).count() / 1e7;
    std::printf("RESULT rdtsc_ns %.1f %d\n", per, (int)(sum & 1));
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        std::fprintf(stderr, "usage: bench_alloc sizes|busy|random|threads|context malloc|async|driver [threads|size]\n");
        return 64;
    }
    use_async = std::strcmp(argv[2], "async") == 0;
    cudaFree(0);
    if (std::strcmp(argv[2], "driver") == 0) {
        cudaDriverEntryPointQueryResult q;
        cudaGetDriverEntryPointByVersion("cuMemAlloc", (void **)&driver_alloc, 13000, cudaEnableDefault, &q);
        cudaGetDriverEntryPointByVersion("cuMemFree", (void **)&driver_free, 13000, cudaEnableDefault, &q);
        if (!driver_alloc || !driver_free)
            die(cudaErrorNotSupported, "cudaGetDriverEntryPointByVersion");
    }
    if (use_async) { // keep freed memory in CUDA's pool: the retained-pool anchor
        cudaMemPool_t mempool;
        cudaDeviceGetDefaultMemPool(&mempool, 0);
        uint64_t threshold = UINT64_MAX;
        cudaMemPoolSetAttribute(mempool, cudaMemPoolAttrReleaseThreshold, &threshold);
    }
    setup_stream();
    if (std::strcmp(argv[1], "sizes") == 0 || std::strcmp(argv[1], "busy") == 0)
        sizes(std::strcmp(argv[1], "busy") == 0, argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 0);
    else if (std::strcmp(argv[1], "random") == 0)
        random_pattern();
    else if (std::strcmp(argv[1], "threads") == 0)
        threads(argc > 3 ? std::atoi(argv[3]) : 1);
    else if (std::strcmp(argv[1], "host") == 0)
        host();
    else if (std::strcmp(argv[1], "context") == 0)
        context();
    if (use_async)
        cudaStreamSynchronize(stream);
    return 0;
}
