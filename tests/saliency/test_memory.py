"""Memory bound: chunked IG with 1,000 path points on a ResNet-18 never holds the points.

XLA's compiled memory analysis gives the temporary buffer size of the whole IG computation: it
must be set by the chunk, nearly the same for 1,000 points as for 20, and far below what
vmapping all 1,000 points in one pass takes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.models.resnet import ResNet18
from jaxmm.saliency import gradients

SIZE = 32


def temp_bytes(steps: int, chunk_size: int) -> int:
  model = ResNet18(num_classes=10)
  x = jnp.zeros((1, SIZE, SIZE, 3))
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  f = lambda v, inputs: model.apply(v, inputs, train=False)[0]
  ig = jax.jit(lambda v, inputs, t: gradients.integrated_gradients(
      functools.partial(f, v), inputs, t, steps=steps, chunk_size=chunk_size))
  compiled = ig.lower(variables, x, jnp.zeros(1, jnp.int32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_ig_memory_is_set_by_the_chunk_not_the_steps():
  chunk = 10
  few, many = temp_bytes(20, chunk), temp_bytes(1000, chunk)
  # 16 chunks: CPU used to unroll loops this short, and XLA kept every chunk's temporaries
  # (8x the 2-chunk figure).
  sixteen = temp_bytes(160, chunk)
  all_at_once = temp_bytes(1000, 1000)  # every path point vmapped in one pass
  assert many <= 1.2 * few + (1 << 20), (few, many)
  assert sixteen <= 1.2 * few + (1 << 20), (few, sixteen)
  assert all_at_once > 5 * many, (many, all_at_once)


def test_chunked_ig_with_1000_points_runs_and_is_complete():
  model = ResNet18(num_classes=4)
  x = jax.random.uniform(jax.random.key(0), (1, SIZE, SIZE, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  f = lambda inputs: model.apply(variables, inputs, train=False)[0]
  t = jnp.argmax(f(x), -1)
  ig = jax.jit(functools.partial(gradients.integrated_gradients, f, steps=1000,
                                 chunk_size=50))(x, t)
  gap = gradients.completeness_gap(f, x, None, t, ig)
  assert float(gap["relative_gap"][0]) < 0.01
  assert np.isfinite(np.asarray(ig)).all()
