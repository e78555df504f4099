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

__global__ void copy(int *to, const int *from, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        to[i] = from[i];
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
    // Peer access: a kernel on device 1 reads device 0's block directly (the pool's mapped range
    // must give peers access, as cuMemAlloc memory has once peer access is enabled).
    int can = 0;
    CHECK(cudaDeviceCanAccessPeer(&can, 1, 0));
    const char *peer = "not possible here";
    bool okp = true;
    if (can) {
        int *mine;
        CHECK(cudaSetDevice(1));
        cudaError_t e = cudaDeviceEnablePeerAccess(0, 0);
        if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled)
            CHECK(e);
        CHECK(cudaMalloc(&mine, n * sizeof(int)));
        copy<<<(n + 255) / 256, 256>>>(mine, on0, n);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpy(host, mine + n - 4, sizeof host, cudaMemcpyDeviceToHost));
        okp = host[0] == 7 && host[3] == 7;
        peer = okp ? "right" : "WRONG";
        CHECK(cudaFree(mine));
        CHECK(cudaSetDevice(0));
    }
    std::printf("%s two_devices: device-1 block freed on device 0 %s; device 1 data %s, device 0 data %s, attribute device %d; device 1 reading device 0's block: %s\n",
                ok0 && ok1 && okp ? "PASS" : "FAIL", again == on1 ? "came back to device 1's pool" : "was not reused",
                ok1 ? "right" : "wrong", ok0 ? "right" : "wrong", attr_device, peer);
    CHECK(cudaFree(on0));
    CHECK(cudaSetDevice(1));
    CHECK(cudaFree(again));
    return ok0 && ok1 && okp ? 0 : 1;
}
