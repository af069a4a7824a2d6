"""Registry of saliency methods as the dataset runner calls them.

Every entry is `fn(apply, batch, targets, key, options, context) -> {name: array [N, ...]}`
for a jaxmm model's apply function (`model_fns.linen_apply_fn(model, variables, train=False)`),
a preprocessed batch and int targets [N]. Image maps come back as "raw" [N, H, W] (signed,
unscaled: channel sums for gradient methods, the upsampled signed CAM for CAMs) and
"normalized" [N, H, W] (signed_unit for gradient methods as paper 004, positive_unit of the
ReLU'd CAM for CAMs), plus each method's extras (CAM weights and contributions, multimodal
shares, token and field attributions, completeness).
"""
import dataclasses
from typing import Any, Callable, Mapping

import jax

from jaxmm.saliency import cams, gradients, model_fns, multimodal, normalize, smoothgrad
from jaxmm.saliency.targets import target_scores


@dataclasses.dataclass(frozen=True)
class Context:
  """What methods need to know about the model and data beyond the batch."""
  modalities: tuple = ("image",)
  multilabel: bool = False
  image_baseline: Any = 0.0   # the normalised black image, -mean / std per channel
  meta_baseline: Any = 0.0
  meta_fields: tuple | None = None  # ((field, slice), ...) of the metadata encoder
  pad_id: int = 0
  keep_ids: tuple = (101, 102)  # [CLS], [SEP]
  layer: str = "image/stage4"   # CAM layer (a key of the model's `out`)


def image_function(apply, batch) -> Callable[[jax.Array], jax.Array]:
  """image -> logits with the other modalities of the batch held fixed."""
  f = model_fns.input_function(apply, batch, ["image"])
  return lambda image: f({"image": image})


def image_maps(attr: jax.Array) -> dict[str, jax.Array]:
  raw = normalize.reduce_channels(attr, "sum")
  return {"raw": raw, "normalized": normalize.signed_unit(raw)}


def cam_maps(out: dict) -> dict[str, jax.Array]:
  """Runner outputs of a CAM computed without ReLU at input size: the signed map as "raw",
  the displayed CAM scaled to [0, 1] as "normalized" (ReLU at the layer's resolution, then
  upsampled, as Grad-CAM, captum's LayerGradCam + interpolate and cams.finish_cam do: a ReLU
  after upsampling would also cut the positive half of every sign change), and the
  layer-resolution map, weights and contributions."""
  shown = cams.finish_cam(out["raw"], relu=True, size=out["cam"].shape[1:3])
  return {"raw": out["cam"], "normalized": normalize.positive_unit(shown),
          "layer_raw": out["raw"], "weights": out["weights"],
          "contributions": out["contributions"]}


def check_options(name: str, options: Mapping, valid: tuple) -> dict:
  """The options as a dict; TypeError naming a key method `name` does not take (as a gradient
  method's keyword arguments do)."""
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise TypeError(f"saliency method {name!r} got unknown options {unknown}; valid options: "
                    f"{list(valid)}")
  return dict(options)


def gradient_method(method: Callable, uses_baseline: bool = False) -> Callable:
  """A registry entry for an image gradient method (gradients / smoothgrad signature)."""

  def run(apply, batch, targets, key, options: Mapping, context: Context):
    opts = dict(options)
    if uses_baseline:
      opts.setdefault("baseline", context.image_baseline)
    attr = method(image_function(apply, batch), batch["image"], targets, key=key,
                  multilabel=context.multilabel, **opts)
    return image_maps(attr)

  return run


CAM_OPTIONS = ("score",)  # the differentiated score: "logit" (Grad-CAM's y^c) or "probability"


def cam_method(name: str) -> Callable:
  """A registry entry for a gradient CAM at `context.layer` (options: CAM_OPTIONS)."""

  def run(apply, batch, targets, key, options: Mapping, context: Context):
    del key
    options = check_options(name, options, CAM_OPTIONS)
    score = lambda logits: target_scores(logits, targets, options.get("score", "logit"),
                                         context.multilabel)
    _, a, g = model_fns.layer_activations_and_gradients(apply, batch, context.layer, score)
    return cam_maps(cams.gradient_cam(name, a, g, relu=False, size=batch["image"].shape[1:3]))

  return run


def score_cam_method(apply, batch, targets, key, options: Mapping, context: Context):
  del key
  out = apply(batch)[1]
  model_fns.check_layer(out, context.layer)
  return cam_maps(cams.score_cam(image_function(apply, batch), batch["image"],
                                 out[context.layer], targets, baseline=context.image_baseline,
                                 relu=False, multilabel=context.multilabel, **dict(options)))


def multimodal_method(apply, batch, targets, key, options: Mapping, context: Context):
  out = multimodal.multimodal_integrated_gradients(
      apply, batch, targets, modalities=context.modalities, key=key,
      image_baseline=context.image_baseline, meta_baseline=context.meta_baseline,
      pad_id=context.pad_id, keep_ids=context.keep_ids, meta_fields=context.meta_fields,
      multilabel=context.multilabel, **dict(options))
  image = out.pop("image", None)
  if image is not None:
    out.update(image_maps(image))
  return out


def smoothgrad_of_gradient(f, x, targets, *, key, num_samples: int = 25,
                           noise_level: float = 0.15, kind: str = "smoothgrad",
                           chunk_size: int = 5, **options):
  """SmoothGrad (any kind) of the vanilla gradient, with the wrapper's options flattened."""
  method = smoothgrad.smoothgrad(gradients.vanilla_gradient, num_samples=num_samples,
                                 noise_level=noise_level, kind=kind, chunk_size=chunk_size)
  return method(f, x, targets, key=key, **options)


METHODS: dict[str, Callable] = {
    "vanilla_gradient": gradient_method(gradients.vanilla_gradient),
    "gradient_x_input": gradient_method(gradients.gradient_x_input),
    "integrated_gradients": gradient_method(gradients.integrated_gradients, uses_baseline=True),
    "smoothgrad": gradient_method(smoothgrad_of_gradient),
    "ig_smoothgrad": gradient_method(smoothgrad.ig_smoothgrad, uses_baseline=True),
    **{name: cam_method(name) for name in cams.CAM_WEIGHTS},
    "scorecam": score_cam_method,
    "multimodal_ig": multimodal_method,
}
# Modalities a method needs in the model.
REQUIRES = {name: ("image",) for name in METHODS}
REQUIRES["multimodal_ig"] = ()


def get_method(name: str) -> Callable:
  if name not in METHODS:
    raise ValueError(f"unknown saliency method {name!r}; valid methods: {sorted(METHODS)}")
  return METHODS[name]


def compiled(name: str, apply_builder: Callable, options: Mapping, context: Context):
  """jit of method `name` as fn(variables, batch, targets, key) -> outputs; `apply_builder`
  maps variables to an apply function (so parameters are arguments, not constants)."""
  method = get_method(name)
  missing = [m for m in REQUIRES[name] if m not in context.modalities]
  if missing:
    raise ValueError(f"saliency method {name!r} needs modalities {list(REQUIRES[name])}; the "
                     f"model has {list(context.modalities)}")
  options = dict(options)

  def fn(variables, batch, targets, key):
    return method(apply_builder(variables), batch, targets, key, options, context)

  return jax.jit(fn)

