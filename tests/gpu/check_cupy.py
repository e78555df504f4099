"""A small CuPy pipeline checked against NumPy. argv[1] == 'none': cupy.cuda.set_allocator(None)."""
import sys
import cupy as cp
import numpy as np
from memkind import kind

if len(sys.argv) > 1 and sys.argv[1] == "none":
    cp.cuda.set_allocator(None)
rng = np.random.default_rng(0)
a = rng.random((2000, 300), dtype=np.float32)
total = 0.0
for i in range(20):
    g = cp.asarray(a)
    g = cp.log1p(g / g.sum(axis=1, keepdims=True) * 1e4)
    g = (g - g.mean(axis=0)) / (g.std(axis=0) + 1e-6)
    c = (g.T @ g) / g.shape[0]
    total = float(c.trace())
ref = np.log1p(a / a.sum(axis=1, keepdims=True) * 1e4)
ref = (ref - ref.mean(axis=0)) / (ref.std(axis=0) + 1e-6)
want = float(np.trace(ref.T @ ref / ref.shape[0]))
ok = abs(total - want) / abs(want) < 1e-4
memory = kind(c.data.ptr)
print(f"{'PASS' if ok else 'FAIL'} cupy ({'set_allocator(None)' if len(sys.argv) > 1 else 'MemoryPool'}): trace {total:.4f} numpy {want:.4f}; memory {memory}")
