"""Which output a saliency map explains: targets per example and the score differentiated.

A target is a class index per example (int32 [N]); for a multilabel model the top-k labels
give int32 [N, k], one map per label. The score of a target is its logit by default (the
pre-sigmoid / pre-softmax value, as Grad-CAM's y^c), or its probability.
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TARGET_KINDS = ("predicted", "true", "top_k")
SCORES = ("logit", "probability")


def check_target_range(targets, num_classes: int) -> None:
  """ValueError when concrete `targets` hold a class outside [0, num_classes); traced targets
  (inside jit) are left to target_scores' NaN."""
  if isinstance(targets, jax.core.Tracer):
    return
  targets = np.asarray(targets)
  if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
    raise ValueError(f"target classes must be in [0, {num_classes}), got range "
                     f"[{targets.min()}, {targets.max()}]")


def target_scores(logits: jax.Array, targets: jax.Array, score: str = "logit",
                  multilabel: bool = False) -> jax.Array:
  """logits [N, K], targets int [N] -> the score of each example's target, float32 [N].

  A target outside [0, K) is an error when the targets are concrete. Inside jit it cannot
  raise, so that example's score, and with it every gradient of it, is NaN (a gather would
  clamp or wrap the index and explain another class, or give an all-zero map).
  """
  if score not in SCORES:
    raise ValueError(f"unknown score {score!r}; valid scores: {list(SCORES)}")
  num_classes = logits.shape[-1]
  check_target_range(targets, num_classes)
  logits = logits.astype(jnp.float32)
  if score == "probability":
    logits = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)
  targets = targets.astype(jnp.int32)
  valid = (targets >= 0) & (targets < num_classes)
  picked = jnp.take_along_axis(logits, jnp.clip(targets, 0, num_classes - 1)[:, None],
                               axis=1)[:, 0]
  # A constant factor: 1 keeps the score and its gradient, NaN poisons both for that example.
  return picked * jnp.where(valid, 1.0, jnp.nan)


def top_k_targets(logits: jax.Array, k: int) -> jax.Array:
  """The k highest-scoring labels of each example, best first: int32 [N, k]."""
  return jax.lax.top_k(logits.astype(jnp.float32), k)[1].astype(jnp.int32)


def resolve_targets(spec: Any, logits: np.ndarray, labels: np.ndarray | None = None,
                    top_k: int = 3) -> np.ndarray:
  """Targets for a batch from a spec.

  spec: "predicted" (argmax of the logits), "true" (the label; multiclass only), "top_k"
  (the `top_k` best labels, int32 [N, k]), an int (that class for every example) or an
  int array [N] / [N, k].
  """
  n, num_classes = logits.shape
  if isinstance(spec, str):
    if spec == "predicted":
      out = np.argmax(logits, axis=-1)
    elif spec == "true":
      if labels is None or np.ndim(labels) != 1:
        raise ValueError("target 'true' needs integer class labels [N] (multiclass); for a "
                         "multilabel model use 'top_k' or explicit label indices")
      out = np.asarray(labels)
    elif spec == "top_k":
      if not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k must be in [1, {num_classes}], got {top_k}")
      out = np.asarray(top_k_targets(jnp.asarray(logits), top_k))
    else:
      raise ValueError(f"unknown target {spec!r}; valid targets: {list(TARGET_KINDS)}, a "
                       f"class index or an index array")
  else:
    out = np.broadcast_to(np.asarray(spec), (n,) + np.shape(spec)[1:])
  out = np.asarray(out, np.int32)
  check_target_range(out, num_classes)
  return out
