// fill_check.h: writes a buffer whole with a kernel and reads it back (GPU test programs). Memory
// a shim should not have handed out makes the kernel fault or the values come back wrong.
#pragma once
#include "cuda_check.h"

#include <cstdint>
#include <vector>

__global__ void fill(uint32_t *p, size_t n, uint32_t value)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = value + (uint32_t)i;
}

// 0 when every element reads back as written; else prints FAIL with the program's name.
static int write_and_check(const char *program, void *buffer, size_t bytes, uint32_t value)
{
    size_t n = bytes / sizeof(uint32_t);
    fill<<<256, 256>>>((uint32_t *)buffer, n, value);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    std::vector<uint32_t> back(n);
    CHECK(cudaMemcpy(back.data(), buffer, bytes, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++)
        if (back[i] != value + (uint32_t)i) {
            std::printf("FAIL %s: wrong value at %zu of a %zu-byte buffer\n", program, i, bytes);
            return 1;
        }
    return 0;
}
