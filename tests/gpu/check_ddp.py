"""Two processes (torchrun --nproc_per_node=2), one GPU each, train a small MLP with
DistributedDataParallel over NCCL: gradients are all-reduced from tensors the shim's pool serves.
Each rank checks its parameters against the same steps on the CPU with the full batch (what
averaged gradients give) and that both ranks ended equal. Rank 0 prints PASS ... or FAIL ..."""
import os

import torch
import torch.distributed as dist

rank = int(os.environ["RANK"])
torch.cuda.set_device(rank)
dist.init_process_group("nccl")
torch.manual_seed(0)
x = torch.randn(512, 512)
y = torch.randint(0, 10, (512,))


def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10))


def train(net, xs, ys, steps=20):
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xs), ys).backward()
        opt.step()
    return [p.detach().cpu() for p in net.parameters()]


half = slice(rank * 256, rank * 256 + 256)  # each rank its half of the batch
ddp = torch.nn.parallel.DistributedDataParallel(model().cuda(), device_ids=[rank])
mine = train(ddp, x[half].cuda(), y[half].cuda())
reference = train(model(), x, y)
err = max((a - b).abs().max().item() for a, b in zip(mine, reference))
flat = torch.cat([p.flatten() for p in mine]).cuda()
gathered = [torch.empty_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
same = torch.equal(gathered[0], gathered[1])
ok = err < 1e-3 and same
if rank == 0:
    print(f"{'PASS' if ok else 'FAIL'} ddp: 2 ranks over NCCL, max difference from the CPU {err:.2e}, "
          f"ranks {'equal' if same else 'DIFFER'}")
dist.destroy_process_group()
raise SystemExit(0 if ok else 1)
