// context_destroy.cu: a program that makes its own context (driver API), allocates, writes and
// frees buffers in it (a pool caches them), destroys it (which frees every allocation it held),
// makes a new one and allocates the same sizes again, written by a kernel and read back. A shim
// that handed out memory of the destroyed context makes the kernel fault or read back wrong
// values. The runtime works in whichever context is current. Prints PASS ... memory device|managed.
#include "cuda_check.h"

#include <cuda.h>
#include <cstdint>
#include <cstdio>
#include <vector>

#define CHECK_CU(call)                                                                             \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS) {                                                                  \
            std::printf("FAIL %s: CUresult %d\n", #call, (int)r_);                                 \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

__global__ void fill(uint32_t *p, size_t n, uint32_t value)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = value + (uint32_t)i;
}

static const size_t sizes[] = {4096, 1 << 20, 48u << 20};

static int write_and_check(void *buffer, size_t bytes, uint32_t value)
{
    size_t n = bytes / sizeof(uint32_t);
    fill<<<256, 256>>>((uint32_t *)buffer, n, value);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    std::vector<uint32_t> back(n);
    CHECK(cudaMemcpy(back.data(), buffer, bytes, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++)
        if (back[i] != value + (uint32_t)i) {
            std::printf("FAIL context_destroy: wrong value at %zu of a %zu-byte buffer\n", i, bytes);
            return 1;
        }
    return 0;
}

int main()
{
    CHECK_CU(cuInit(0));
    CUdevice dev;
    CHECK_CU(cuDeviceGet(&dev, 0));
    CUcontext ctx;
    CHECK_CU(cuCtxCreate(&ctx, nullptr, 0, dev));
    void *held, *buffers[3];
    CHECK(cudaMalloc(&held, 4096)); // still held when the context goes
    for (int i = 0; i < 3; i++) {
        CHECK(cudaMalloc(&buffers[i], sizes[i]));
        if (write_and_check(buffers[i], sizes[i], 1))
            return 1;
        CHECK(cudaFree(buffers[i]));
    }
    CHECK_CU(cuCtxDestroy(ctx));
    CHECK_CU(cuCtxCreate(&ctx, nullptr, 0, dev));
    for (int i = 0; i < 3; i++) {
        CHECK(cudaMalloc(&buffers[i], sizes[i]));
        if (write_and_check(buffers[i], sizes[i], 7))
            return 1;
    }
    cudaPointerAttributes attrs;
    CHECK(cudaPointerGetAttributes(&attrs, buffers[2]));
    for (int i = 0; i < 3; i++)
        CHECK(cudaFree(buffers[i]));
    CHECK_CU(cuCtxDestroy(ctx));
    std::printf("PASS context_destroy: buffers allocated in a new context after cuCtxDestroy "
                "written by a kernel and read back; memory %s\n",
                attrs.type == cudaMemoryTypeManaged ? "managed" : "device");
    return 0;
}
