"""Gradient attribution methods: vanilla gradient, gradient x input, Integrated Gradients.

Every method has the signature `method(f, x, targets, *, key=None, **options) -> attributions`
where f maps inputs x (an array or a pytree of arrays, leading batch axis N) to logits [N, K],
targets are int [N], and attributions have x's structure and shapes. f must treat examples
independently (a model in eval mode does), so one gradient of the summed target scores gives
every example's input gradient. Only input gradients are taken: parameters are constants of f.
`key` is accepted by every method (SmoothGrad passes one) and unused by the deterministic ones.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.saliency import chunking
from jaxmm.saliency.targets import target_scores

PyTree = Any
ModelFn = Callable[[PyTree], jax.Array]  # inputs -> logits [N, K]
RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
         "gausslegendre")


def input_gradients(f: ModelFn, x: PyTree, targets: jax.Array, score: str = "logit",
                    multilabel: bool = False) -> PyTree:
  """d score(f(x))[n, targets[n]] / d x[n] for every example n; x's structure."""
  return jax.grad(lambda inputs: jnp.sum(target_scores(f(inputs), targets, score, multilabel)))(x)


def vanilla_gradient(f: ModelFn, x: PyTree, targets: jax.Array, *, key=None,
                     score: str = "logit", multilabel: bool = False) -> PyTree:
  """The signed input gradient (captum's Saliency with abs=False)."""
  del key
  return input_gradients(f, x, targets, score, multilabel)


def gradient_x_input(f: ModelFn, x: PyTree, targets: jax.Array, *, key=None,
                     score: str = "logit", multilabel: bool = False) -> PyTree:
  """Input gradient times input, elementwise."""
  del key
  return jax.tree.map(jnp.multiply, input_gradients(f, x, targets, score, multilabel), x)


def path_alphas(steps: int, rule: str = "riemann_trapezoid") -> tuple[np.ndarray, np.ndarray]:
  """Points alpha_j in [0, 1] and weights w_j with sum_j w_j g(alpha_j) ~ integral_0^1 g.

  Riemann left/right/middle: m points of weight 1/m at (j)/m, (j+1)/m, (j+1/2)/m;
  trapezoid: m points linspace(0, 1, m), weights 1/(m-1) halved at both ends;
  gausslegendre: m-point Gauss-Legendre nodes and weights mapped to [0, 1].
  Returns float32 arrays [m], [m].
  """
  if rule not in RULES:
    raise ValueError(f"unknown integration rule {rule!r}; valid rules: {list(RULES)}")
  if steps < (2 if rule == "riemann_trapezoid" else 1):
    raise ValueError(f"{rule} needs steps >= {2 if rule == 'riemann_trapezoid' else 1}, "
                     f"got {steps}")
  j = np.arange(steps, dtype=np.float64)
  weights = np.full(steps, 1.0 / steps)
  if rule == "riemann_left":
    alphas = j / steps
  elif rule == "riemann_right":
    alphas = (j + 1) / steps
  elif rule == "riemann_middle":
    alphas = (j + 0.5) / steps
  elif rule == "riemann_trapezoid":
    alphas = j / (steps - 1)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] *= 0.5
  else:
    nodes, w = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, w / 2
  return alphas.astype(np.float32), weights.astype(np.float32)


def full_baseline(x: PyTree, baseline: PyTree | None = None) -> PyTree:
  """The baseline broadcast to x's shapes and dtypes; None gives zeros (black for images in
  [0, 1]: for normalised images pass the normalised black, -mean / std per channel)."""
  if baseline is None:
    return jax.tree.map(jnp.zeros_like, x)
  return jax.tree.map(lambda b, a: jnp.broadcast_to(jnp.asarray(b, a.dtype), a.shape),
                      baseline, x)


def integrated_gradients(f: ModelFn, x: PyTree, targets: jax.Array, *, key=None,
                         baseline: PyTree | None = None, steps: int = 50,
                         rule: str = "riemann_trapezoid", chunk_size: int = 16,
                         score: str = "logit", multilabel: bool = False) -> PyTree:
  """IG_i = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x'))/dx_i da (Sundararajan et al.).

  The integral uses `rule` with `steps` points; points are vmapped `chunk_size` at a time and
  the chunks summed in a scan, so memory is set by chunk_size x N, not steps x N.
  baseline: x's structure (broadcastable leaves); None is zeros.
  """
  del key
  baseline = full_baseline(x, baseline)
  diff = jax.tree.map(jnp.subtract, x, baseline)
  alphas, weights = path_alphas(steps, rule)

  def chunk_sum(chunk):
    a, w = chunk
    point = lambda alpha: jax.tree.map(lambda b, d: b + alpha * d, baseline, diff)
    grads = jax.vmap(lambda alpha: input_gradients(f, point(alpha), targets, score,
                                                   multilabel))(a)
    return jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), grads)

  mean_grad = chunking.sum_over_chunks(chunk_sum, (jnp.asarray(alphas), jnp.asarray(weights)),
                                       chunk_size)
  return jax.tree.map(jnp.multiply, diff, mean_grad)


def completeness_gap(f: ModelFn, x: PyTree, baseline: PyTree, targets: jax.Array,
                     attributions: PyTree, score: str = "logit",
                     multilabel: bool = False) -> dict[str, jax.Array]:
  """IG completeness per example: sum of attributions vs F(x) - F(baseline), float32 [N] each.

  Returns {"attribution_sum", "score_difference", "gap" (their difference),
  "relative_gap" (gap / |score_difference|)}.
  """
  n = targets.shape[0]
  baseline = full_baseline(x, baseline)
  total = sum(jnp.sum(a.reshape(n, -1), axis=1) for a in jax.tree.leaves(attributions))
  difference = (target_scores(f(x), targets, score, multilabel)
                - target_scores(f(baseline), targets, score, multilabel))
  gap = total - difference
  return {"attribution_sum": total, "score_difference": difference, "gap": gap,
          "relative_gap": jnp.abs(gap) / jnp.maximum(jnp.abs(difference), 1e-12)}
