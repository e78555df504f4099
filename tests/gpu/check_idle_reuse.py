"""Safe reuse after an idle spell, in real frameworks: the device is synchronized (idle, so the
shim would hand a freed block out at once), then a kernel on a side stream starts reading buffer
x after about 100 ms, x is freed, and a buffer of the same size is allocated and overwritten on
the default stream. The reader must still see x's data: the shim has to have seen the launches
(PyTorch: cudaLaunchKernel through its CUDA runtime; CuPy: cuLaunchKernel linked by name).
Under GPUSHIM_POOL_REUSE=immediate the reader sees the overwrite (the test can fail).

    python3 check_idle_reuse.py torch|cupy        (torch: run with PYTORCH_NO_CUDA_MEMORY_CACHING=1)
Prints PASS or FAIL.
"""
import sys

N = 64 << 20  # float32 elements: 256 MiB
CYCLES = 200_000_000  # about 100 ms at 2 GHz


def torch_case():
    import torch

    x = torch.full((N,), 3.0, device="cuda")
    torch.cuda.synchronize()  # the device is idle now
    side = torch.cuda.Stream()  # non-blocking: the default stream does not wait for it
    with torch.cuda.stream(side):
        torch.cuda._sleep(CYCLES)
        y = x.clone()  # reads x after the sleep
    del x  # cudaFree: no caching allocator under PYTORCH_NO_CUDA_MEMORY_CACHING=1
    z = torch.full((N,), 7.0, device="cuda")
    side.synchronize()
    torch.cuda.synchronize()
    return bool((y == 3.0).all()), z


def cupy_case():
    import cupy as cp

    cp.cuda.set_allocator(None)  # cudaMalloc and cudaFree for every array
    late_copy = cp.RawKernel(
        r"""
extern "C" __global__ void late_copy(const float *src, float *dst, size_t n, long long cycles)
{
    long long start = clock64();
    while (clock64() - start < cycles) {
    }
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}
""",
        "late_copy",
    )
    x = cp.full((N,), 3.0, dtype=cp.float32)
    y = cp.empty_like(x)
    cp.cuda.Device().synchronize()  # the device is idle now
    side = cp.cuda.Stream(non_blocking=True)
    with side:
        late_copy((256,), (256,), (x, y, cp.uint64(N), cp.int64(CYCLES)))
    del x
    z = cp.full((N,), 7.0, dtype=cp.float32)
    side.synchronize()
    cp.cuda.Device().synchronize()
    return bool((y == 3.0).all()), z


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "torch"
    ok, _ = torch_case() if which == "torch" else cupy_case()
    print(("PASS" if ok else "FAIL") + f" idle_reuse {which}: the reader saw "
          + ("only the original data" if ok else "data written after the free"))


if __name__ == "__main__":
    main()
