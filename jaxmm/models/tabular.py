"""Encoder for tabular metadata (age, sex, body site, ... already encoded as floats)."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MetaMLP(nn.Module):
  """Dense -> ReLU -> dropout per width in `hidden`.

  __call__(x [N, D], train) -> (embedding [N, hidden[-1]], {"embedding": same}); the
  embedding is the last hidden layer's output, marked with `perturb`. With `hidden=()` the
  embedding is the input itself.
  """
  hidden: Sequence[int] = (64, 64)
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    if x.ndim != 2:
      raise ValueError(f"MetaMLP expects metadata [N, D], got shape {tuple(x.shape)}")
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"dense_{i}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = self.perturb("embedding", x)
    return x, {"embedding": x}
