"""A jitted JAX computation checked against NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
from memkind import kind

rng = np.random.default_rng(0)
a = rng.standard_normal((512, 512)).astype(np.float32)
f = jax.jit(lambda m: jnp.tanh(m @ m.T).sum(axis=0))
out = f(jnp.asarray(a))
memory = kind(out.unsafe_buffer_pointer())
got = np.asarray(out)
want = np.tanh(a.astype(np.float64) @ a.T.astype(np.float64)).sum(axis=0)
err = np.abs(got - want).max() / np.abs(want).max()
print(f"{'PASS' if err < 1e-2 else 'FAIL'} jax on {jax.devices()[0].platform}: relative error {err:.2e}; memory {memory}")
