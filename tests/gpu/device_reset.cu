// device_reset.cu: cudaDeviceReset in the middle of a program. Buffers are held, written and
// freed (so a pool caches them); the device is reset, which frees every allocation; then the same
// sizes are allocated again, written by a kernel and read back. A shim that handed out memory
// from before the reset makes the kernel fault (an illegal address) or read back wrong values.
// (A free of a pointer from before the reset is not tried: the driver may have given its address
// to a new allocation, which CUDA would then free.)
// Prints one line: PASS ... memory device|managed, or FAIL ...
#include "fill_check.h"

#include <cstdio>

static const size_t sizes[] = {4096, 1 << 20, 48u << 20};

int main()
{
    void *held, *before[3], *after[3];
    CHECK(cudaMalloc(&held, 4096)); // still held at the reset, which frees it
    for (int i = 0; i < 3; i++) {
        CHECK(cudaMalloc(&before[i], sizes[i]));
        if (write_and_check("device_reset", before[i], sizes[i], 1))
            return 1;
    }
    for (int i = 0; i < 3; i++)
        CHECK(cudaFree(before[i]));
    CHECK(cudaDeviceReset());
    for (int i = 0; i < 3; i++) {
        CHECK(cudaMalloc(&after[i], sizes[i]));
        if (write_and_check("device_reset", after[i], sizes[i], 7))
            return 1;
    }
    cudaPointerAttributes attrs;
    CHECK(cudaPointerGetAttributes(&attrs, after[2]));
    for (int i = 0; i < 3; i++)
        CHECK(cudaFree(after[i]));
    std::printf("PASS device_reset: buffers allocated after cudaDeviceReset written by a kernel and "
                "read back; memory %s\n",
                attrs.type == cudaMemoryTypeManaged ? "managed" : "device");
    return 0;
}
