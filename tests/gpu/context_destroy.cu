// context_destroy.cu: a program that makes its own context (driver API), allocates, writes and
// frees buffers in it (a pool caches them), destroys it (which frees every allocation it held),
// makes a new one and allocates the same sizes again, written by a kernel and read back. A shim
// that handed out memory of the destroyed context makes the kernel fault or read back wrong
// values. The runtime works in whichever context is current. Prints PASS ... memory device|managed.
#include "fill_check.h"

#include <cstdio>

static const size_t sizes[] = {4096, 1 << 20, 48u << 20};

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
        if (write_and_check("context_destroy", buffers[i], sizes[i], 1))
            return 1;
        CHECK(cudaFree(buffers[i]));
    }
    CHECK_CU(cuCtxDestroy(ctx));
    CHECK_CU(cuCtxCreate(&ctx, nullptr, 0, dev));
    for (int i = 0; i < 3; i++) {
        CHECK(cudaMalloc(&buffers[i], sizes[i]));
        if (write_and_check("context_destroy", buffers[i], sizes[i], 7))
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
