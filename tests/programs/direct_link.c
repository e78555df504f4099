/* direct_link.c: a program linked against libcuda itself (-lcuda), calling cu* by name. */
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 5;
    CUdevice dev;
    CUcontext ctx;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
        cuCtxSetCurrent(ctx))
        return 3;
    for (int i = 0; i < n; i++) {
        CUdeviceptr p;
        if (cuMemAlloc(&p, 65536) != CUDA_SUCCESS || cuMemFree(p) != CUDA_SUCCESS)
            return 2;
    }
    /* Eleven arguments, five on the stack: they must pass the shim's wrapper intact. */
    if (cuLaunchKernel((CUfunction)0xf00, 1, 2, 3, 4, 5, 6, 7, (CUstream)0x5008, (void **)0x9009,
                       (void **)0xa00a) != CUDA_SUCCESS)
        return 4;
    size_t free_bytes, total;
    if (cuMemGetInfo(&free_bytes, &total) != CUDA_SUCCESS || cuCtxSynchronize() != CUDA_SUCCESS)
        return 2;
    printf("ok direct %d\n", n);
    return 0;
}
