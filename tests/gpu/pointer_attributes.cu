// pointer_attributes.cu: what a library asks of a pointer before it caches a registration or
// shares it by IPC. Two 4 KiB allocations in a row (a pool may give the second the first one's
// address): their buffer IDs must differ, and the range must be the allocation. Prints the
// mapping size and legacy-IPC capability the program sees (the pool answers for the block).
// Prints one line: PASS ... memory device|managed, or FAIL ...
#include "cuda_check.h"

#include <cstdio>


int main()
{
    void *a, *b;
    unsigned long long id_a = 0, id_b = 0;
    CHECK(cudaMalloc(&a, 4096));
    CHECK_CU(cuPointerGetAttribute(&id_a, CU_POINTER_ATTRIBUTE_BUFFER_ID, (CUdeviceptr)a));
    CHECK(cudaFree(a));
    CHECK(cudaMalloc(&b, 4096));
    CHECK_CU(cuPointerGetAttribute(&id_b, CU_POINTER_ATTRIBUTE_BUFFER_ID, (CUdeviceptr)b));
    CUdeviceptr start = 0;
    size_t range = 0, mapping = 0;
    int ipc = -1, managed = 0;
    CHECK_CU(cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                   (CUdeviceptr)b + 100));
    CHECK_CU(cuPointerGetAttribute(&range, CU_POINTER_ATTRIBUTE_RANGE_SIZE, (CUdeviceptr)b));
    CHECK_CU(cuPointerGetAttribute(&mapping, CU_POINTER_ATTRIBUTE_MAPPING_SIZE, (CUdeviceptr)b));
    CHECK_CU(cuPointerGetAttribute(&ipc, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
                                   (CUdeviceptr)b));
    CHECK_CU(cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, (CUdeviceptr)b));
    CHECK(cudaFree(b));
    // A block of 3 MiB (the pool's large heap: its mapped range where growth in place is on),
    // one byte past it, asked from inside.
    void *c;
    CUdeviceptr c_start = 0;
    size_t c_range = 0;
    int c_ipc = -1;
    CHECK(cudaMalloc(&c, 3 << 20));
    CHECK_CU(cuPointerGetAttribute(&c_start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                   (CUdeviceptr)c + (2 << 20)));
    CHECK_CU(cuPointerGetAttribute(&c_range, CU_POINTER_ATTRIBUTE_RANGE_SIZE, (CUdeviceptr)c));
    CHECK_CU(cuPointerGetAttribute(&c_ipc, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
                                   (CUdeviceptr)c));
    CHECK(cudaMemset(c, 1, 3 << 20));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaFree(c));
    bool ok = id_a != id_b && start == (CUdeviceptr)b && c_start == (CUdeviceptr)c &&
              c_range == (3 << 20);
    std::printf("%s pointer_attributes: same address %s, buffer ids %s (%#llx, %#llx); range start "
                "%s, range size %zu, mapping size %zu, legacy ipc %d; memory %s; 3 MiB block: "
                "range start %s, range size %zu, legacy ipc %d\n",
                ok ? "PASS" : "FAIL", a == b ? "yes" : "no", id_a != id_b ? "differ" : "EQUAL",
                id_a, id_b, start == (CUdeviceptr)b ? "ok" : "WRONG", range, mapping, ipc,
                managed ? "managed" : "device", c_start == (CUdeviceptr)c ? "ok" : "WRONG",
                c_range, c_ipc);
    return ok ? 0 : 1;
}
