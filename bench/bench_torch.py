"""PyTorch anchors. 'alloc': the caching allocator's raw_alloc/raw_delete per size (ns per pair,
median). 'mlp': ms per training step of the brief's MLP (batch 512, 1024-4096-4096-10, AdamW),
with PyTorch's peak reserved/allocated. Lines starting with RESULT are machine-readable."""
import sys
import time
import torch

what = sys.argv[1]
if what == "alloc":
    torch.cuda.init()
    for size in (256, 4096, 65536, 1 << 20, 16 << 20, 256 << 20):
        torch.cuda.caching_allocator_delete(torch.cuda.caching_allocator_alloc(size))
        per_pair = []
        for _ in range(200):
            t0 = time.perf_counter_ns()
            for _ in range(20):
                torch.cuda.caching_allocator_delete(torch.cuda.caching_allocator_alloc(size))
            per_pair.append((time.perf_counter_ns() - t0) / 20)
        per_pair.sort()
        print(f"RESULT torch_alloc {size} {per_pair[len(per_pair) // 2]:.0f}")
elif what == "mlp":
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096),
                                torch.nn.ReLU(), torch.nn.Linear(4096, 10)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(512, 1024, device="cuda")
    y = torch.randint(0, 10, (512,), device="cuda")
    def step():
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
