// device_limit.cu: GPUSHIM_DEVICE_LIMIT=1G on a real GPU.
//   device_limit managed   (GPUSHIM_MODE=managed) two blocks of 768 MiB: the first within the
//                          budget, most of the second past it; the range attributes say where
//                          each is preferred (past the budget: the CPU, accessed by device 0);
//                          a kernel writes both and the host reads them back; cudaMemGetInfo
//                          reports the budget as the total
//   device_limit device    (off or pool mode) the second block is refused with
//                          cudaErrorMemoryAllocation; cudaMemGetInfo reports the budget
#include <cstdio>
#include <cstring>
#include <string>

#include "cuda_check.h"

__global__ void fill(unsigned *p, size_t n, unsigned v)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = v + (unsigned)i;
}

static int preferred(const void *p, size_t bytes)
{
    int location = -100;
    cudaMemRangeGetAttribute(&location, sizeof location, cudaMemRangeAttributePreferredLocation,
                             p, bytes);
    return location;
}

static bool accessed_by_device0(const void *p, size_t bytes)
{
    int devices[8];
    for (int &d : devices)
        d = -100;
    if (cudaMemRangeGetAttribute(devices, sizeof devices, cudaMemRangeAttributeAccessedBy, p,
                                 bytes) != cudaSuccess)
        return false;
    for (int d : devices)
        if (d == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    const std::string mode = argc > 1 ? argv[1] : "managed";
    const size_t bytes = 768ull << 20, n = bytes / sizeof(unsigned);
    unsigned *a = nullptr, *b = nullptr;
    CHECK(cudaMalloc(&a, bytes));
    cudaError_t second = cudaMalloc(&b, bytes);
    size_t free_bytes = 0, total = 0;
    CHECK(cudaMemGetInfo(&free_bytes, &total));
    if (mode == "device") {
        bool ok = second == cudaErrorMemoryAllocation && total == (1ull << 30);
        std::printf("%s device_limit device: second 768 MiB block: %s; cudaMemGetInfo total %zu "
                    "free %zu\n",
                    ok ? "PASS" : "FAIL", cudaGetErrorString(second), total, free_bytes);
        (void)cudaGetLastError();
        CHECK(cudaFree(a));
        return !ok;
    }
    CHECK(second);
    int managed_a = 0, managed_b = 0;
    cudaPointerAttributes pa, pb;
    CHECK(cudaPointerGetAttributes(&pa, a));
    CHECK(cudaPointerGetAttributes(&pb, b));
    managed_a = pa.type == cudaMemoryTypeManaged;
    managed_b = pb.type == cudaMemoryTypeManaged;
    const size_t tail = 64ull << 20; // the last 64 MiB of b: past the 1 GiB budget
    int where_a = preferred(a, 4096), where_b = preferred((char *)b + bytes - tail, tail);
    bool by_device = accessed_by_device0((char *)b + bytes - tail, tail);
    fill<<<1024, 256>>>(a, n, 1);
    fill<<<1024, 256>>>(b, n, 2);
    CHECK(cudaDeviceSynchronize());
    size_t wrong = 0;
    for (size_t i = 0; i < n; i += 4099)
        wrong += a[i] != 1 + (unsigned)i || b[i] != 2 + (unsigned)i;
    bool ok = managed_a && managed_b && where_b == cudaCpuDeviceId && where_a != cudaCpuDeviceId &&
              by_device && wrong == 0 && total == (1ull << 30);
    std::printf("%s device_limit managed: both managed %s; preferred location within the budget "
                "%d, past it %d (cudaCpuDeviceId %d), accessed by device 0 past it %s; %zu wrong "
                "values; cudaMemGetInfo total %zu free %zu\n",
                ok ? "PASS" : "FAIL", managed_a && managed_b ? "yes" : "no", where_a, where_b,
                cudaCpuDeviceId, by_device ? "yes" : "no", wrong, total, free_bytes);
    CHECK(cudaFree(a));
    CHECK(cudaFree(b));
    return !ok;
}
