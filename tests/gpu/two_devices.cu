// two_devices.cu: one pool per device. A block allocated on device 1 is freed while device 0 is
// current; it must go back to device 1's pool (the next device-1 allocation of that size gets it
// back under immediate reuse), and kernels on both devices must see their own data.
#include <cstdio>

#include "cuda_check.h"

__global__ void fill(int *a, int n, int v)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        a[i] = v;
}

int main()
{
    int count = 0;
    CHECK(cudaGetDeviceCount(&count));
    if (count < 2) {
        std::printf("SKIP two_devices: %d device(s)\n", count);
        return 0;
    }
    const int n = 1 << 20;
    int *on0, *on1, *again, host[4];
    CHECK(cudaSetDevice(0));
    CHECK(cudaMalloc(&on0, n * sizeof(int)));
    CHECK(cudaSetDevice(1));
    CHECK(cudaMalloc(&on1, n * sizeof(int)));
    int attr_device = -1;
    cudaPointerAttributes attrs;
    CHECK(cudaPointerGetAttributes(&attrs, on1));
    attr_device = attrs.device;
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(on1)); // freed while device 0 is current
    CHECK(cudaSetDevice(1));
    CHECK(cudaMalloc(&again, n * sizeof(int)));
    fill<<<(n + 255) / 256, 256>>>(again, n, 11);
    CHECK(cudaMemcpy(host, again, sizeof host, cudaMemcpyDeviceToHost));
    bool ok1 = host[0] == 11 && attr_device == 1;
    CHECK(cudaSetDevice(0));
    fill<<<(n + 255) / 256, 256>>>(on0, n, 7);
    CHECK(cudaMemcpy(host, on0, sizeof host, cudaMemcpyDeviceToHost));
    bool ok0 = host[0] == 7;
    std::printf("%s two_devices: device-1 block freed on device 0 %s; device 1 data %s, device 0 data %s, attribute device %d\n",
                ok0 && ok1 ? "PASS" : "FAIL", again == on1 ? "came back to device 1's pool" : "was not reused",
                ok1 ? "right" : "wrong", ok0 ? "right" : "wrong", attr_device);
    CHECK(cudaFree(on0));
    CHECK(cudaSetDevice(1));
    CHECK(cudaFree(again));
    return ok0 && ok1 ? 0 : 1;
}
