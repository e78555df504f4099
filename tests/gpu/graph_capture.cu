// graph_capture.cu: a CUDA graph captured while the program allocates, as PyTorch's allocator does
// under torch.cuda.graph (cudaMalloc in relaxed capture mode inside a global-mode capture). Blocks
// freed just before the capture, while kernels still run, are what a pool would want to recycle
// by a device synchronization or a legacy-stream event; either would invalidate the capture. The
// graph is then launched and every buffer checked.
//   graph_capture [blocking|nonblocking]    the capturing stream's kind (default blocking)
// Prints one line: PASS ... memory device|managed, or FAIL ...
#include "fill_check.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char **argv)
{
    bool nonblocking = argc > 1 && std::strcmp(argv[1], "nonblocking") == 0;
    const size_t bytes = 48u << 20, n = bytes / sizeof(uint32_t);
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, nonblocking ? cudaStreamNonBlocking : cudaStreamDefault));
    for (int i = 0; i < 20; i++) { // freed while their kernels may still run
        void *p;
        CHECK(cudaMalloc(&p, bytes));
        fill<<<1024, 256, 0, s>>>((uint32_t *)p, n, 1);
        CHECK(cudaFree(p));
    }
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    void *held[8];
    for (int i = 0; i < 8; i++) {
        cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed; // PyTorch's guard around cudaMalloc
        CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
        cudaError_t e = cudaMalloc(&held[i], bytes);
        CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
        CHECK(e);
        fill<<<1024, 256, 0, s>>>((uint32_t *)held[i], n, 100 * (uint32_t)i);
    }
    cudaGraph_t graph;
    CHECK(cudaStreamEndCapture(s, &graph));
    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaStreamSynchronize(s));
    std::vector<uint32_t> back(n);
    for (int i = 0; i < 8; i++) {
        CHECK(cudaMemcpy(back.data(), held[i], bytes, cudaMemcpyDeviceToHost));
        for (size_t k = 0; k < n; k += 4099)
            if (back[k] != 100 * (uint32_t)i + (uint32_t)k) {
                std::printf("FAIL graph_capture: buffer %d holds a wrong value at %zu\n", i, k);
                return 1;
            }
    }
    cudaPointerAttributes attrs;
    CHECK(cudaPointerGetAttributes(&attrs, held[0]));
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    for (int i = 0; i < 8; i++)
        CHECK(cudaFree(held[i]));
    CHECK(cudaStreamDestroy(s));
    std::printf("PASS graph_capture (%s stream): 8 allocations during the capture, graph launched "
                "and checked; memory %s\n",
                nonblocking ? "non-blocking" : "blocking",
                attrs.type == cudaMemoryTypeManaged ? "managed" : "device");
    return 0;
}
