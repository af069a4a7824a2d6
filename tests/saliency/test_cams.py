"""CAM family against hand computations on a hand-built network, and Score-CAM (the paper's
probability weights and pytorch-grad-cam's logit softmax) on a 2-channel example."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.saliency import cams, model_fns
from jaxmm.saliency.targets import target_scores

N, S = 2, 4
W_HEAD = np.array([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]], np.float32)  # [C=2, K=3]


class HandNet(nn.Module):
  """A = [x, 2x + 1] (a fixed 1x1 conv, marked "features"); logits = mean_hw(A^2) @ W_HEAD,
  so d logit_c / d A[h, w, k] = 2 A[h, w, k] W[k, c] / (h w)."""

  @nn.compact
  def __call__(self, x):
    a = self.perturb("features", jnp.concatenate([x, 2 * x + 1], axis=-1))
    return jnp.mean(a ** 2, axis=(1, 2)) @ jnp.asarray(W_HEAD), {"features": a}


@pytest.fixture(scope="module")
def setup():
  x = jax.random.normal(jax.random.key(0), (N, S, S, 1))
  apply = model_fns.linen_apply_fn(HandNet(), {})
  targets = jnp.array([0, 2])
  logits, a, g = model_fns.layer_activations_and_gradients(
      apply, x, "features", lambda l: target_scores(l, targets))
  a_np = np.concatenate([np.asarray(x), 2 * np.asarray(x) + 1], -1)
  g_np = 2 * a_np * W_HEAD[:, [0, 2]].T[:, None, None, :] / (S * S)
  return a, g, a_np, g_np


def test_activations_and_gradients_are_the_hand_computed_ones(setup):
  a, g, a_np, g_np = setup
  np.testing.assert_allclose(a, a_np, rtol=1e-6)
  np.testing.assert_allclose(g, g_np, rtol=1e-5, atol=1e-7)


def test_gradcam_and_hirescam_match_hand_computation(setup):
  a, g, a_np, g_np = setup
  weights = g_np.mean((1, 2))
  raw = (a_np * weights[:, None, None, :]).sum(-1)
  out = cams.gradient_cam("gradcam", a, g, relu=True)
  np.testing.assert_allclose(out["weights"], weights, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out["raw"], raw, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["cam"], np.maximum(raw, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["contributions"], weights * a_np.sum((1, 2)), rtol=1e-5,
                             atol=1e-6)
  hires = cams.gradient_cam("hirescam", a, g, relu=False)
  np.testing.assert_allclose(hires["raw"], (g_np * a_np).sum(-1), rtol=1e-5, atol=1e-6)
  # HiResCAM's contributions sum to the gradient x activation total, here 2 x the logit.
  np.testing.assert_allclose(hires["contributions"].sum(-1), (g_np * a_np).sum((1, 2, 3)),
                             rtol=1e-5)


def test_gradcam_pp_xgradcam_layercam_match_hand_computation(setup):
  a, g, a_np, g_np = setup
  alpha = np.zeros_like(g_np)
  for n in range(N):
    for k in range(2):
      total = a_np[n, :, :, k].sum()
      for i in range(S):
        for j in range(S):
          gij = g_np[n, i, j, k]
          denominator = 2 * gij ** 2 + total * gij ** 3
          alpha[n, i, j, k] = gij ** 2 / denominator if gij != 0 and denominator != 0 else 0
  pp = (alpha * np.maximum(g_np, 0)).sum((1, 2))
  np.testing.assert_allclose(cams.gradient_cam("gradcam_pp", a, g)["weights"], pp, rtol=1e-4,
                             atol=1e-7)
  x_weights = (a_np / a_np.sum((1, 2), keepdims=True) * g_np).sum((1, 2))
  np.testing.assert_allclose(cams.gradient_cam("xgradcam", a, g)["weights"], x_weights,
                             rtol=1e-4, atol=1e-6)
  layer = cams.gradient_cam("layercam", a, g, relu=False)
  np.testing.assert_allclose(layer["raw"], (np.maximum(g_np, 0) * a_np).sum(-1), rtol=1e-5,
                             atol=1e-6)


def test_upsampling_gives_the_input_size_and_unknown_methods_list_valid_ones(setup):
  a, g, _, _ = setup
  assert cams.gradient_cam("gradcam", a, g, size=(16, 16))["cam"].shape == (N, 16, 16)
  with pytest.raises(ValueError, match="valid:.*gradcam_pp"):
    cams.gradient_cam("gradcam2", a, g)


def two_channel_example():
  """Channel 0 covers the left half, channel 1 the top half (masks 1 and 0 after min-max);
  class 0 sums the input, class 1 doubles its right half, class 2 is constant."""
  a = np.zeros((1, 4, 4, 2), np.float32)
  a[0, :, :2, 0] = 3.0
  a[0, :2, :, 1] = 5.0
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) / 16
  f = lambda v: jnp.stack([v.sum((1, 2, 3)), 2 * v[:, :, 2:].sum((1, 2, 3)),
                           jnp.zeros(v.shape[0])], -1)
  left, top = x.copy(), x.copy()
  left[0, :, 2:] = 0
  top[0, 2:] = 0
  logits = np.array([[v.sum(), 2 * v[0, :, 2:].sum(), 0.0] for v in (left, top)])  # [C, K]
  return a, x, f, logits


def test_score_cam_weights_are_the_masked_input_probabilities():
  # The paper's (and official code's) weight of channel k is softmax(f(x o M_k))[class]; a
  # softmax over channels of those probabilities kept every weight within a factor e.
  a, x, f, logits = two_channel_example()
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  for target in range(3):
    out = cams.score_cam(f, jnp.asarray(x), jnp.asarray(a), jnp.array([target]), chunk_size=1)
    np.testing.assert_allclose(out["scores"][0], probs[:, target], rtol=1e-5)
    np.testing.assert_allclose(out["weights"][0], probs[:, target], rtol=1e-5)
    np.testing.assert_allclose(out["cam"][0], np.maximum((a[0] * probs[:, target]).sum(-1), 0),
                               rtol=1e-5)


def test_score_cam_logit_is_pytorch_grad_cams_softmax_over_channels():
  a, x, f, logits = two_channel_example()
  out = cams.score_cam(f, jnp.asarray(x), jnp.asarray(a), jnp.array([1]), score="logit",
                       chunk_size=1)
  scores = logits[:, 1]
  np.testing.assert_allclose(out["scores"][0], scores, rtol=1e-6)
  weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
  np.testing.assert_allclose(out["weights"][0], weights, rtol=1e-5)
  np.testing.assert_allclose(out["cam"][0], np.maximum((a[0] * weights).sum(-1), 0), rtol=1e-5)
  with pytest.raises(ValueError, match=r"unknown Score-CAM score 'logits'.*'logit'"):
    cams.score_cam(f, jnp.asarray(x), jnp.asarray(a), jnp.array([1]), score="logits")


def test_score_cam_memory_is_set_by_the_chunk_not_the_channel_count():
  # Every channel's full-size mask used to be built before the chunked map: C x N x H x W.
  n, size = 2, 64
  w = jax.random.normal(jax.random.key(0), (size * size * 3, 3)) * 1e-3
  f = lambda v: v.reshape(v.shape[0], -1) @ w
  x, t = jnp.ones((n, size, size, 3)), jnp.zeros(n, jnp.int32)

  def temp_bytes(channels):
    a = jnp.ones((n, 4, 4, channels))
    compiled = jax.jit(lambda x, a: cams.score_cam(f, x, a, t, chunk_size=4)["cam"]).lower(
        x, a).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  few, many = temp_bytes(32), temp_bytes(512)
  all_masks = 512 * n * size * size * 4
  assert many <= 1.2 * few + (1 << 18), (few, many)
  assert many < all_masks / 8, (many, all_masks)


def test_cam_entries_refuse_options_they_do_not_take():
  # "relu" was documented and silently ignored, as was any misspelt key.
  from jaxmm.saliency import methods  # pylint: disable=g-import-not-at-top
  for options in ({"relu": True}, {"scroe": "probability"}):
    with pytest.raises(TypeError, match="saliency method 'gradcam' got unknown options"):
      methods.METHODS["gradcam"](None, {}, jnp.zeros(1, jnp.int32), None, options,
                                 methods.Context())
