"""A few training steps of a small MLP on the GPU, checked against the same steps on the CPU."""
import torch
from memkind import kind

torch.manual_seed(0)
x = torch.randn(256, 512)
y = torch.randint(0, 10, (256,))
def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
def train(device):
    m = model().to(device)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    xs, ys = x.to(device), y.to(device)
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(xs), ys)
        loss.backward()
        opt.step()
    return loss.item(), [p.detach().cpu() for p in m.parameters()]
gpu_loss, gpu_params = train("cuda")
probe = torch.ones(1024, device="cuda")  # kept alive: without caching, a freed tensor's pointer is gone
memory = kind(probe.data_ptr())
cpu_loss, cpu_params = train("cpu")
err = max((a - b).abs().max().item() for a, b in zip(gpu_params, cpu_params))
ok = abs(gpu_loss - cpu_loss) < 1e-3 and err < 1e-3
print(f"{'PASS' if ok else 'FAIL'} torch: loss gpu {gpu_loss:.5f} cpu {cpu_loss:.5f}, max parameter difference {err:.2e}; memory {memory}")
