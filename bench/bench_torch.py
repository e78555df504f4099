"""PyTorch anchors. 'alloc': the caching allocator's raw_alloc/raw_delete per size, timed in C++
(a small extension built on the spot) so Python's call overhead is not counted: ns per pair,
median of batches. 'mlp': ms per training step of the brief's MLP (batch 512, 1024-4096-4096-10,
AdamW), with PyTorch's peak reserved/allocated; 'mlp sidestream': the same, and each step also
copies a slice of the input on a side stream (PyTorch creates its non-blocking stream pool).
Lines starting with RESULT are machine-readable. 'random': bench_alloc's random pattern (1000 live
blocks, log-uniform 256 B..4 MiB, 20000 random replacements) as uint8 tensors under the caching
allocator: its peak reserved over the peak of the bytes asked for."""
import sys
import time
import torch

what = sys.argv[1]
if what == "alloc":
    from torch.utils.cpp_extension import load_inline
    source = r'''
#include <torch/extension.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <algorithm>
#include <chrono>
#include <vector>
double pair_ns(int64_t bytes, int64_t batches) {
  namespace alloc = c10::cuda::CUDACachingAllocator;
  alloc::raw_delete(alloc::raw_alloc(bytes));
  std::vector<double> v;
  for (int64_t b = 0; b < batches; b++) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; i++) alloc::raw_delete(alloc::raw_alloc(bytes));
    auto t1 = std::chrono::steady_clock::now();
    v.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / 20);
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
'''
    ext = load_inline("gpushim_torch_alloc", cpp_sources=source, functions=["pair_ns"],
                      extra_cflags=["-O2"], with_cuda=True, verbose=False)
    torch.cuda.init()
    for size in (256, 4096, 65536, 1 << 20, 16 << 20, 256 << 20):
        print(f"RESULT torch_alloc {size} {ext.pair_ns(size, 2000):.0f}")
elif what == "random":
    import math
    import random
    rng = random.Random(42)
    lo, hi = math.log(256), math.log(4 << 20)
    draw = lambda: int(math.exp(rng.uniform(lo, hi)))
    sizes = [draw() for _ in range(1000)]
    live = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in sizes]
    in_use = peak = sum(sizes)
    for _ in range(20000):
        k = rng.randrange(1000)
        live[k] = None
        in_use -= sizes[k]
        sizes[k] = draw()
        live[k] = torch.empty(sizes[k], dtype=torch.uint8, device="cuda")
        in_use += sizes[k]
        peak = max(peak, in_use)
    torch.cuda.synchronize()
    reserved = torch.cuda.max_memory_reserved()
    print(f"RESULT torch_random reserved {reserved} allocated {torch.cuda.max_memory_allocated()} "
          f"requested {peak} ratio {reserved / peak:.3f}")
elif what == "mlp":
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096),
                                torch.nn.ReLU(), torch.nn.Linear(4096, 10)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(512, 1024, device="cuda")
    y = torch.randint(0, 10, (512,), device="cuda")
    side = torch.cuda.Stream() if sys.argv[2:] == ["sidestream"] else None
    staged = torch.empty(64, 1024, device="cuda")
    def step():
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                staged.copy_(x[:64])
            torch.cuda.current_stream().wait_stream(side)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(40):
            loss = step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / 40 * 1e3)
    times.sort()
    final = loss.item()
    print(f"RESULT mlp_ms {times[len(times) // 2]:.3f} loss {final:.4f} finite {final == final}")
    print(f"RESULT torch_peak reserved {torch.cuda.max_memory_reserved()} allocated {torch.cuda.max_memory_allocated()}")
