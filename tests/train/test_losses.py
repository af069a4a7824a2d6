"""Analytic tests of the losses against hand computations and sklearn."""
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from jaxmm.train import losses


def test_balanced_weights_match_sklearn():
  labels = np.array([0, 0, 0, 1, 2, 2, 0, 1])
  ours = losses.balanced_class_weights(labels, 3)
  ref = compute_class_weight("balanced", classes=np.arange(3), y=labels)
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_balanced_weights_absent_class_is_zero():
  np.testing.assert_allclose(losses.balanced_class_weights(np.array([0, 0, 1]), 3),
                             [0.5, 1.0, 0.0], rtol=1e-6)


def test_weighted_cross_entropy_by_hand():
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
  labels = np.array([0, 1, 0])
  cw = np.array([1.0, 3.0], np.float32)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  nll = -logp[np.arange(3), labels]
  w = cw[labels]
  expected = (nll * w).sum() / w.sum()
  got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), cw)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Per-example weights of 0 drop rows (padding).
  got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), cw,
                                     jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(got, (nll[:2] * w[:2]).sum() / w[:2].sum(), rtol=1e-6)


@pytest.mark.parametrize("policy,expected_mask,expected_target", [
    ("ignore", [1, 1, 0, 0], [1, 0, 0, 0]),
    ("zeros", [1, 1, 1, 0], [1, 0, 0, 0]),
    ("ones", [1, 1, 1, 0], [1, 0, 1, 0]),
])
def test_multilabel_targets(policy, expected_mask, expected_target):
  targets, mask = losses.multilabel_targets(jnp.array([[1, 0, -1, -2]]), policy)
  np.testing.assert_array_equal(mask[0], expected_mask)
  np.testing.assert_array_equal(targets[0] * mask[0], expected_target)


def test_masked_bce_ignores_not_mentioned():
  logits = jnp.array([[0.3, -1.2, 2.0, 5.0]])
  labels = jnp.array([[1, 0, -1, -2]])
  p = 1 / (1 + np.exp(-np.array([0.3, -1.2])))
  expected = -(np.log(p[0]) + np.log(1 - p[1])) / 2
  np.testing.assert_allclose(losses.masked_binary_cross_entropy(logits, labels, "ignore"),
                             expected, rtol=1e-5)
  # Changing a masked entry's logit does not change the loss.
  other = logits.at[0, 3].set(-9.0).at[0, 2].set(-7.0)
  np.testing.assert_allclose(losses.masked_binary_cross_entropy(other, labels, "ignore"),
                             expected, rtol=1e-5)


def test_unknown_policy_lists_valid():
  with pytest.raises(ValueError, match="ignore"):
    losses.make_loss_fn(True, uncertain_policy="maybe")
