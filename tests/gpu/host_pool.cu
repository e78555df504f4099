// host_pool.cu: pinned host memory under GPUSHIM_HOST_POOL. Two checks:
//   1. attributes: a mapped block (cudaHostAllocMapped) freed and allocated again answers
//      cudaHostGetFlags, cudaHostGetDevicePointer and cudaPointerGetAttributes as a fresh one
//      does, and a kernel writes it through its device pointer;
//   2. safe reuse: a copy from pinned buffer H is queued behind a ~200 ms kernel, H is freed,
//      a buffer of H's size is allocated (a pool may hand H back) and overwritten at once; the
//      copy must still deliver H's original bytes (cudaFreeHost's contract).
// Prints PASS or FAIL lines, and whether H's memory came back.
#include <cstdio>
#include <cstring>

#include "cuda_check.h"

__global__ void spin(long long cycles)
{
    long long start = clock64();
    while (clock64() - start < cycles) {
    }
}

__global__ void fill(unsigned char *p, size_t n, unsigned char v)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        p[i] = v;
}

int main()
{
    const size_t n = 1 << 20;
    // 1. attributes of a reused mapped block
    unsigned char *h = nullptr, *again = nullptr;
    CHECK(cudaHostAlloc((void **)&h, n, cudaHostAllocMapped));
    CHECK(cudaFreeHost(h));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaHostAlloc((void **)&again, n, cudaHostAllocMapped));
    unsigned flags = 0;
    CHECK(cudaHostGetFlags(&flags, again));
    void *device_view = nullptr;
    CHECK(cudaHostGetDevicePointer(&device_view, again, 0));
    cudaPointerAttributes attributes;
    CHECK(cudaPointerGetAttributes(&attributes, again));
    fill<<<(n + 255) / 256, 256>>>((unsigned char *)device_view, n, 42);
    CHECK(cudaDeviceSynchronize());
    bool written = again[0] == 42 && again[n - 1] == 42;
    bool ok = (flags & cudaHostAllocMapped) && attributes.type == cudaMemoryTypeHost && written;
    std::printf("%s host_pool attributes: same block %s; flags %#x, type %d, written through "
                "the device pointer %s\n",
                ok ? "PASS" : "FAIL", again == h ? "yes" : "no", flags, (int)attributes.type,
                written ? "yes" : "no");
    CHECK(cudaFreeHost(again));

    // 2. a copy still queued from a freed block
    unsigned char *src = nullptr, *next = nullptr, *dst = nullptr;
    CHECK(cudaMallocHost((void **)&src, n));
    std::memset(src, 7, n);
    CHECK(cudaMalloc((void **)&dst, n));
    int rate_khz = 0;
    CHECK(cudaDeviceGetAttribute(&rate_khz, cudaDevAttrClockRate, 0));
    spin<<<1, 1>>>((long long)rate_khz * 200); // about 200 ms, on the legacy stream
    CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, 0));
    CHECK(cudaFreeHost(src));
    CHECK(cudaMallocHost((void **)&next, n));
    std::memset(next, 9, n); // if next is src, this must not reach the copy
    CHECK(cudaDeviceSynchronize());
    unsigned char *back = (unsigned char *)std::malloc(n);
    CHECK(cudaMemcpy(back, dst, n, cudaMemcpyDeviceToHost));
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++)
        wrong += back[i] != 7;
    std::printf("%s host_pool safe reuse: %zu of %zu bytes wrong; freed block handed back %s\n",
                wrong ? "FAIL" : "PASS", wrong, n, next == src ? "yes (after the copy)" : "no");
    CHECK(cudaFreeHost(next));
    CHECK(cudaFree(dst));
    std::free(back);
    return wrong || !ok;
}
