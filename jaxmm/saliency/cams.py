"""The CAM family on any named intermediate: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM,
HiResCAM (pixel-wise Grad-CAM) and Score-CAM (the paper's probability weights, or
pytorch-grad-cam's softmax over channels of logits).

Gradient CAMs are functions of the layer's activations A [N, h, w, C] and the gradients
G = d score / d A (same shape), which `model_fns.layer_activations_and_gradients` gets from
Linen's `perturb` collection in one forward and backward pass. Each returns a dict:
  "raw"            float32 [N, h, w]: sum_c of the weighted features, signed and unscaled
  "weights"        [N, C] (channel weights) or [N, h, w, C] (pixel-wise methods)
  "contributions"  [N, C]: sum over h, w of the weighted features (each feature's class
                   activation level, what the integrated feature analysis of paper 003 uses)
  "cam"            [N, H, W] or [N, h, w]: `raw` after the optional ReLU and upsampling
"""
from typing import Callable

import jax
import jax.numpy as jnp

from jaxmm.saliency import normalize
from jaxmm.saliency.targets import target_scores

EPS = 1e-7
HW = (1, 2)


def gradcam_weights(a: jax.Array, g: jax.Array) -> jax.Array:
  """Grad-CAM (Selvaraju et al.): w_c = mean over h, w of G. [N, C]."""
  del a
  return g.mean(HW)


def gradcam_pp_weights(a: jax.Array, g: jax.Array) -> jax.Array:
  """Grad-CAM++ (Chattopadhay et al., exp-score closed form):
  alpha = G^2 / (2 G^2 + sum_hw(A) G^3), w_c = sum_hw alpha relu(G). [N, C]."""
  g2, g3 = jnp.square(g), g ** 3
  denominator = 2 * g2 + a.sum(HW, keepdims=True) * g3
  alpha = jnp.where(g != 0, g2 / jnp.where(denominator != 0, denominator, EPS), 0.0)
  return (alpha * jax.nn.relu(g)).sum(HW)


def xgradcam_weights(a: jax.Array, g: jax.Array) -> jax.Array:
  """XGrad-CAM (Fu et al.): w_c = sum_hw (A / sum_hw A) G. [N, C]."""
  return (a / (a.sum(HW, keepdims=True) + EPS) * g).sum(HW)


def layercam_weights(a: jax.Array, g: jax.Array) -> jax.Array:
  """LayerCAM (Jiang et al.): pixel-wise weights relu(G). [N, h, w, C]."""
  del a
  return jax.nn.relu(g)


def hirescam_weights(a: jax.Array, g: jax.Array) -> jax.Array:
  """HiResCAM / pixel-wise Grad-CAM (Draelos & Carin): G itself, no spatial averaging."""
  del a
  return g


CAM_WEIGHTS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "gradcam": gradcam_weights,
    "gradcam_pp": gradcam_pp_weights,
    "xgradcam": xgradcam_weights,
    "layercam": layercam_weights,
    "hirescam": hirescam_weights,
}


def finish_cam(raw: jax.Array, relu: bool = True,
               size: tuple[int, int] | None = None) -> jax.Array:
  """The displayed CAM: optional ReLU, then optional bilinear upsampling to `size`."""
  cam = jax.nn.relu(raw) if relu else raw
  return cam if size is None else normalize.upsample(cam, size)


def weighted_cam(a: jax.Array, weights: jax.Array, relu: bool = True,
                 size: tuple[int, int] | None = None) -> dict[str, jax.Array]:
  """raw / weights / contributions / cam (module docstring) from activations and weights."""
  a = a.astype(jnp.float32)
  w = weights[:, None, None, :] if weights.ndim == 2 else weights
  weighted = w * a
  raw = weighted.sum(-1)
  return {"raw": raw, "weights": weights, "contributions": weighted.sum(HW),
          "cam": finish_cam(raw, relu, size)}


def gradient_cam(name: str, a: jax.Array, g: jax.Array, relu: bool = True,
                 size: tuple[int, int] | None = None) -> dict[str, jax.Array]:
  """The gradient CAM `name` (a key of CAM_WEIGHTS) from activations and gradients."""
  if name not in CAM_WEIGHTS:
    raise ValueError(f"unknown CAM method {name!r}; valid: {sorted(CAM_WEIGHTS)}")
  a, g = a.astype(jnp.float32), g.astype(jnp.float32)
  return weighted_cam(a, CAM_WEIGHTS[name](a, g), relu, size)


def channel_mask(a_c: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Score-CAM's mask of one channel: its activation [N, h, w] upsampled to the input size
  and min-max scaled to [0, 1] per example, [N, H, W, 1]."""
  return normalize.min_max(normalize.upsample(a_c.astype(jnp.float32), size))[..., None]


def paper_weights(scores: jax.Array) -> jax.Array:
  """Score-CAM's weights (Wang et al. 2020; their official code): each channel's masked-input
  target probability itself, [N, C]. The paper's increase of confidence f(X o H_k) - f(X_b)
  also subtracts the baseline's score, a constant the official code leaves out, as here."""
  return scores


def pytorch_grad_cam_weights(scores: jax.Array) -> jax.Array:
  """pytorch-grad-cam's ScoreCAM weights: the softmax over channels of the masked-input
  target logits, [N, C]."""
  return jax.nn.softmax(scores, axis=-1)


# The score each masked input is given -> the channel weights built from it. A softmax over
# channels of probabilities (what score="probability" used to do) keeps every weight within a
# factor e of every other, so the map hardly depends on the class.
SCORE_CAM_WEIGHTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "probability": paper_weights,
    "logit": pytorch_grad_cam_weights,
}


def score_cam(f: Callable[[jax.Array], jax.Array], x: jax.Array, a: jax.Array,
              targets: jax.Array, *, chunk_size: int = 32, baseline: jax.Array | float = 0.0,
              score: str = "probability", multilabel: bool = False, relu: bool = True,
              upsample_cam: bool = True) -> dict[str, jax.Array]:
  """Score-CAM (Wang et al.): channel c's score is the target score of f on the input masked
  by channel c's upsampled, min-max scaled activation (baseline + M_c (x - baseline)).

  score="probability" (default) is the paper's method: the weight of channel c is that
  score, the target's softmax (sigmoid if multilabel) probability on the masked input.
  score="logit" is pytorch-grad-cam's variant: the weights are the softmax over channels of
  the masked-input target logits. Channels are vmapped `chunk_size` at a time (lax.map);
  each channel's mask is made inside the map, so memory is set by `chunk_size`, not by the
  channel count. x [N, H, W, Cin] images, a [N, h, w, C] the layer's activations. Returns
  the dict of the module docstring plus "scores" [N, C], the masked-input scores.
  """
  if score not in SCORE_CAM_WEIGHTS:
    raise ValueError(f"unknown Score-CAM score {score!r}; valid: {sorted(SCORE_CAM_WEIGHTS)}")
  size = x.shape[1:3]

  def channel_score(a_c):
    mask = channel_mask(a_c, size)
    return target_scores(f(baseline + mask * (x - baseline)), targets, score, multilabel)

  scores = jax.lax.map(channel_score, jnp.moveaxis(a, -1, 0),
                       batch_size=min(chunk_size, a.shape[-1])).T  # [N, C]
  out = weighted_cam(a, SCORE_CAM_WEIGHTS[score](scores), relu,
                     size if upsample_cam else None)
  out["scores"] = scores
  return out
