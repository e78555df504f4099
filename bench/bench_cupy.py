"""The brief's CuPy pipeline (normalize, log1p, scale, covariance; 20000x2000 float32): ms per
iteration, median of 5 rounds of 10. argv[1] == 'none': cupy.cuda.set_allocator(None)."""
import sys
import time
import cupy as cp

if len(sys.argv) > 1 and sys.argv[1] == "none":
    cp.cuda.set_allocator(None)
x = cp.random.default_rng(0).random((20000, 2000), dtype=cp.float32)
def pipeline():
    y = x / x.sum(axis=1, keepdims=True) * 1e4
    y = cp.log1p(y)
    y = (y - y.mean(axis=0)) / y.std(axis=0)
    return (y.T @ y) / y.shape[0]
for _ in range(3):
    pipeline()
cp.cuda.Device().synchronize()
rounds = []
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(10):
        c = pipeline()
    cp.cuda.Device().synchronize()
    rounds.append((time.perf_counter() - t0) / 10 * 1e3)
rounds.sort()
print(f"RESULT cupy_ms {rounds[2]:.3f} trace {float(c.trace()):.2f}")
