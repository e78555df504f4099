// alloc_kernel.cu: makes exactly N device allocations (cudaMalloc), runs a kernel on each,
// checks every element on the host, frees them. Built twice by scripts/gpu-check.sh: with nvcc's
// default static runtime and with -cudart shared.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_check.h"

__global__ void fill(float *out, size_t n, float scale)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = scale * (float)(i % 1000) + 1.0f;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? std::atoi(argv[1]) : 10;
    CHECK(cudaFree(0)); // context creation, the classic idiom: must keep working
    std::vector<float *> bufs(n);
    std::vector<size_t> sizes(n);
    for (int k = 0; k < n; k++) {
        sizes[k] = (size_t)(k + 1) * 100000;
        CHECK(cudaMalloc(&bufs[k], sizes[k] * sizeof(float)));
        fill<<<(unsigned)((sizes[k] + 255) / 256), 256>>>(bufs[k], sizes[k], (float)(k + 1));
        CHECK(cudaGetLastError());
    }
    CHECK(cudaDeviceSynchronize());
    cudaPointerAttributes attrs;
    CHECK(cudaPointerGetAttributes(&attrs, bufs[0]));
    const char *memory = attrs.type == cudaMemoryTypeManaged ? "managed" : attrs.type == cudaMemoryTypeDevice ? "device" : "other";
    size_t bad = 0;
    for (int k = 0; k < n; k++) {
        std::vector<float> host(sizes[k]);
        CHECK(cudaMemcpy(host.data(), bufs[k], sizes[k] * sizeof(float), cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < sizes[k]; i++)
            if (host[i] != (float)(k + 1) * (float)(i % 1000) + 1.0f)
                bad++;
    }
    for (int k = 0; k < n; k++)
        CHECK(cudaFree(bufs[k]));
    std::printf("%s alloc_kernel: %d allocations, %zu wrong elements; memory %s\n", bad ? "FAIL" : "PASS", n, bad, memory);
    return bad ? 1 : 0;
}
