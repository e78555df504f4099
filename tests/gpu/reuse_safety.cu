// reuse_safety.cu: a kernel on a non-blocking stream keeps reading buffer A while the host frees
// A, allocates B of the same size (a pool may hand back A's memory) and overwrites B from another
// stream. cudaFree's contract: the reader sees only A's original data. Prints how many reads saw
// something else, and how long cudaFree blocked.
//   reuse_safety              as above (non-blocking streams)
//   reuse_safety blocking     blocking streams, and for 400 ms after the free the host allocates,
//                             overwrites and frees blocks of A's size again and again (the pool's
//                             events decide when A may come back); prints how often A's memory
//                             came back, and when
//   reuse_safety nonblocking  the same with non-blocking streams (each marked by its own event)
//   reuse_safety destroyed    the same, and the reader's stream is destroyed right after the
//                             launch, before the free (its work is still queued)
#include <chrono>
#include <cstdio>
#include <string>

#include "cuda_check.h"

// Re-reads a[] for about `cycles` clock cycles; counts elements that are not 7.
__global__ void reader(const int *a, size_t n, long long cycles, unsigned long long *wrong)
{
    long long start = clock64();
    unsigned long long local = 0;
    while (clock64() - start < cycles) {
        for (size_t i = threadIdx.x; i < n; i += blockDim.x)
            if (((volatile const int *)a)[i] != 7)
                local++;
    }
    atomicAdd(wrong, local);
}

__global__ void set7(int *a, size_t n)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        a[i] = 7;
}

int main(int argc, char **argv)
{
    const std::string mode = argc > 1 ? argv[1] : "";
    const bool blocking = mode == "blocking";
    const bool loop = blocking || mode == "nonblocking" || mode == "destroyed";
    const size_t n = 1 << 20;
    int *a, *b;
    unsigned long long *wrong;
    cudaStream_t s1, s2;
    unsigned flags = blocking ? cudaStreamDefault : cudaStreamNonBlocking;
    CHECK(cudaStreamCreateWithFlags(&s1, flags));
    CHECK(cudaStreamCreateWithFlags(&s2, flags));
    CHECK(cudaMalloc(&wrong, sizeof *wrong));
    CHECK(cudaMemset(wrong, 0, sizeof *wrong));
    CHECK(cudaMalloc(&a, n * sizeof(int)));
    set7<<<(n + 255) / 256, 256>>>(a, n);
    CHECK(cudaDeviceSynchronize());
    int rate_khz = 0;
    CHECK(cudaDeviceGetAttribute(&rate_khz, cudaDevAttrClockRate, 0));
    reader<<<1, 1024, 0, s1>>>(a, n, (long long)rate_khz * 200, wrong); // about 200 ms
    if (mode == "destroyed")
        CHECK(cudaStreamDestroy(s1)); // returns at once; the reader keeps running
    auto t0 = std::chrono::steady_clock::now();
    CHECK(cudaFree(a));
    auto t1 = std::chrono::steady_clock::now();
    if (loop) {
        long reuses = 0, pairs = 0;
        double first_reuse_ms = -1;
        while (std::chrono::steady_clock::now() - t1 < std::chrono::milliseconds(400)) {
            int *c;
            CHECK(cudaMalloc(&c, n * sizeof(int)));
            if (c == a) {
                reuses++;
                if (first_reuse_ms < 0)
                    first_reuse_ms = std::chrono::duration<double, std::milli>(
                                         std::chrono::steady_clock::now() - t1)
                                         .count();
            }
            CHECK(cudaMemsetAsync(c, 0xFF, n * sizeof(int), s2));
            CHECK(cudaFree(c));
            pairs++;
        }
        CHECK(cudaDeviceSynchronize());
        unsigned long long host_wrong = 0;
        CHECK(cudaMemcpy(&host_wrong, wrong, sizeof host_wrong, cudaMemcpyDeviceToHost));
        std::printf("reuse_safety %s: %ld pairs in 400 ms after the free; A's memory came back "
                    "%ld times, first %.1f ms after the free (the reader ran about 200 ms); reader "
                    "saw %llu wrong values\n",
                    mode.c_str(), pairs, reuses, first_reuse_ms, host_wrong);
        CHECK(cudaFree(wrong));
        return 0;
    }
    CHECK(cudaMalloc(&b, n * sizeof(int)));
    CHECK(cudaMemsetAsync(b, 0xFF, n * sizeof(int), s2));
    CHECK(cudaDeviceSynchronize());
    unsigned long long host_wrong = 0;
    CHECK(cudaMemcpy(&host_wrong, wrong, sizeof host_wrong, cudaMemcpyDeviceToHost));
    double free_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    std::printf("reuse_safety: B %s A's memory; cudaFree blocked %.1f ms; reader saw %llu wrong values\n",
                (void *)b == (void *)a ? "reuses" : "does not reuse", free_ms, host_wrong);
    CHECK(cudaFree(b));
    CHECK(cudaFree(wrong));
    return 0;
}
