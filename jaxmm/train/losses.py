"""Losses: class-weighted softmax cross-entropy and masked multilabel BCE.

Every loss takes an optional per-example `weights` [N] (0 for padding rows) and
returns a scalar mean over the examples (and labels) that count.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
NOT_MENTIONED = -2
UNCERTAIN = -1


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Per-class weights n / (K * count_k), as sklearn's class_weight='balanced'.

  Classes absent from `labels` get weight 0 rather than infinity.
  """
  labels = np.asarray(labels).reshape(-1)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
  return weights.astype(np.float32)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          class_weights: Optional[jax.Array] = None,
                          weights: Optional[jax.Array] = None) -> jax.Array:
  """Weighted mean cross-entropy, sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch's convention).

  Args:
    logits: [N, K] float.
    labels: [N] int class indices.
    class_weights: optional [K] per-class weights.
    weights: optional [N] per-example weights (0 masks padding).
  """
  logits = logits.astype(jnp.float32)
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  w = jnp.ones_like(per_example)
  if class_weights is not None:
    w = w * jnp.asarray(class_weights, jnp.float32)[labels]
  if weights is not None:
    w = w * weights.astype(jnp.float32)
  return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1e-12)


def multilabel_targets(labels: jax.Array, uncertain_policy: str = "ignore"):
  """Maps CheXpert-style labels {1, 0, -1, -2} to (targets, mask) for BCE.

  -2 (not mentioned) is always masked out; -1 (uncertain) is masked ("ignore"),
  or read as 0 ("zeros") or 1 ("ones").

  Returns:
    targets: float32 [N, L] in {0, 1}; mask: float32 [N, L] in {0, 1}.
  """
  if uncertain_policy not in UNCERTAIN_POLICIES:
    raise ValueError(f"Unknown uncertain_policy {uncertain_policy!r}; valid: {UNCERTAIN_POLICIES}")
  labels = jnp.asarray(labels)
  mask = labels != NOT_MENTIONED
  if uncertain_policy == "ignore":
    mask = mask & (labels != UNCERTAIN)
    targets = (labels == 1)
  elif uncertain_policy == "zeros":
    targets = (labels == 1)
  else:
    targets = (labels == 1) | (labels == UNCERTAIN)
  return targets.astype(jnp.float32), mask.astype(jnp.float32)


def masked_binary_cross_entropy(logits: jax.Array, labels: jax.Array,
                                uncertain_policy: str = "ignore",
                                weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean sigmoid BCE over the label entries that count (paper 001's masked BCE).

  Args:
    logits: [N, L] float.
    labels: [N, L] int in {1, 0, -1, -2}.
    uncertain_policy: how -1 is treated: "ignore", "zeros" or "ones".
    weights: optional [N] per-example weights (0 masks padding).
  """
  targets, mask = multilabel_targets(labels, uncertain_policy)
  if weights is not None:
    mask = mask * weights.astype(jnp.float32)[:, None]
  per_entry = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets)
  return jnp.sum(per_entry * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_loss_fn(multilabel: bool, class_weights: Optional[Sequence[float]] = None,
                 uncertain_policy: str = "ignore"):
  """Returns loss(logits, labels, weights) for the task."""
  if multilabel:
    if uncertain_policy not in UNCERTAIN_POLICIES:
      raise ValueError(f"Unknown uncertain_policy {uncertain_policy!r}; valid: {UNCERTAIN_POLICIES}")
    return lambda logits, labels, weights=None: masked_binary_cross_entropy(
        logits, labels, uncertain_policy, weights)
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  return lambda logits, labels, weights=None: softmax_cross_entropy(logits, labels, cw, weights)
