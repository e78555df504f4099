"""A rapids-singlecell-like CuPy pipeline with large per-batch temporaries: sparse counts (cells x
genes, CSR), normalize per cell, log1p, highly variable genes, scale, PCA, and a batched kNN whose
distance matrix (batch x cells, float32) is a new ~0.5 GB temporary every batch.

    python3 bench/bench_singlecell.py ALLOCATOR [RUNS]

ALLOCATOR: pool (CuPy's MemoryPool), async (cudaMallocAsync, MemoryAsyncPool), raw
(set_allocator(None): every array a cudaMalloc/cudaFree, what the shim sees). Prints seconds per
run (median of RUNS after one warm-up), and the results' checksums, which must be equal across
allocators and modes (same inputs, same kernels): RESULT singlecell SECONDS_MEDIAN ... CHECK ...
"""
import sys
import time

import cupy as cp
import cupyx.scipy.sparse as sparse

CELLS, GENES, DENSITY = 60_000, 20_000, 0.02
HVG, COMPONENTS, K, BATCH = 2_000, 50, 15, 2_000

which = sys.argv[1] if len(sys.argv) > 1 else "raw"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
if which == "raw":
    cp.cuda.set_allocator(None)
elif which == "async":
    cp.cuda.set_allocator(cp.cuda.MemoryAsyncPool().malloc)
elif which != "pool":
    sys.exit(f"unknown allocator {which}")

# The counts: random sparse integers, made once (seeded, so every process has the same ones).
rng = cp.random.RandomState(7)
nnz = int(CELLS * GENES * DENSITY)
rows = rng.randint(0, CELLS, nnz, dtype=cp.int32)
cols = rng.randint(0, GENES, nnz, dtype=cp.int32)
vals = rng.poisson(2.0, nnz).astype(cp.float32) + 1
counts = sparse.coo_matrix((vals, (rows, cols)), shape=(CELLS, GENES)).tocsr()
counts.sum_duplicates()
del rows, cols, vals


def pipeline():
    # normalize_total + log1p
    per_cell = counts.sum(axis=1).ravel()
    x = sparse.diags(1e4 / per_cell) @ counts
    x.data = cp.log1p(x.data)
    # highly variable genes: the genes of highest dispersion
    mean = cp.asarray(x.mean(axis=0)).ravel()
    sq = x.copy()
    sq.data **= 2
    var = cp.asarray(sq.mean(axis=0)).ravel() - mean**2
    del sq
    dispersion = var / (mean + 1e-12)
    genes = cp.sort(cp.argsort(-dispersion)[:HVG])
    pick = sparse.csr_matrix((cp.ones(HVG, dtype=cp.float32), (genes, cp.arange(HVG))),
                             shape=(GENES, HVG))
    dense = (x @ pick).toarray()
    del x, pick
    # scale: z-score per gene, clipped
    dense -= dense.mean(axis=0)
    dense /= dense.std(axis=0) + 1e-6
    cp.clip(dense, -10, 10, out=dense)
    # PCA through the covariance's eigenvectors
    cov = dense.T @ dense / (CELLS - 1)
    values, vectors = cp.linalg.eigh(cov)
    top = vectors[:, ::-1][:, :COMPONENTS].copy()
    explained = values[::-1][:COMPONENTS]
    embedding = dense @ top
    del dense, cov, vectors
    # kNN in the embedding, batch by batch: each batch's distance matrix is a fresh temporary
    norms = (embedding * embedding).sum(axis=1)
    checksum = 0
    for start in range(0, CELLS, BATCH):
        q = embedding[start:start + BATCH]
        d = norms[start:start + BATCH, None] - 2.0 * (q @ embedding.T) + norms[None, :]
        nearest = cp.argpartition(d, K, axis=1)[:, :K]
        checksum += int(cp.sort(nearest, axis=1).sum(dtype=cp.int64))
        del d, nearest
    return float(explained.sum()), checksum


pipeline()  # warm-up: kernels compiled, pools filled
cp.cuda.Device().synchronize()
times = []
for _ in range(runs):
    t0 = time.perf_counter()
    variance, checksum = pipeline()
    cp.cuda.Device().synchronize()
    times.append(time.perf_counter() - t0)
times.sort()
print(f"RESULT singlecell {times[len(times) // 2]:.4f} runs {' '.join(f'{t:.4f}' for t in times)} "
      f"CHECK variance {variance:.4f} knn {checksum}")
