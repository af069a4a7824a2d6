"""The multimodal model: one encoder per modality, combined by a fusion head.

Fusions (registry `FUSIONS`):
  concat  early fusion of paper 000: concat features -> "fused" -> FusionMLP (128, 64);
          head_hidden=() is a linear classifier with dropout on "fused" (`FusionMLP`).
  late    decision-level: a Dense head per modality, probabilities averaged -> "fused";
          logits = log(mean prob) (softmax) or logit(mean prob) (sigmoid, multilabel),
          computed in log space from the heads' logits (`mean_probability_logits`).
  joint   paper 001: concat (512 + 768 for ResNet-18 + BERT-base) -> "fused" ->
          Dense(joint_hidden) -> ReLU -> dropout -> Dense.
  film    the metadata embedding scales and shifts the image's last feature map channel-wise
          (FiLM), the modulated map is pooled and concatenated with the other features ->
          "fused" -> FusionMLP.
A fusion is a function run inside `MultimodalModel.__call__` (a Linen compact scope): the
modules it creates are the model's children, and it marks "fused" with `model.perturb` so that
gradients with respect to the fused vector come from the "perturbations" collection.
"""
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Canonical modality order: features are concatenated and late weights are aligned in it.
MODALITIES = ("image", "text", "meta")
# Batch keys each modality's encoder reads ("text_type_ids" is optional).
BATCH_KEYS = {"image": ("image",), "text": ("text_ids", "text_mask"), "meta": ("meta",)}
# probabilities_to_logits clips probabilities into [eps, 1 - eps] before taking log / logit.
PROB_EPS = 1e-7

Array = jax.Array
FusionOutput = tuple[Array, dict[str, Array]]  # (logits [N, K], fusion's entries of `out`)


def prefixed(prefix: str, out: Mapping[str, Array]) -> dict[str, Array]:
  """{"stage4": x} -> {"<prefix>/stage4": x}."""
  return {f"{prefix}/{key}": value for key, value in out.items()}


def class_probabilities(logits: Array, multilabel: bool) -> Array:
  """Per-class sigmoid (multilabel) or softmax over classes, in float32. [N, K] -> [N, K]."""
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)


def probabilities_to_logits(probs: Array, multilabel: bool) -> Array:
  """Inverse of `class_probabilities` on clipped probabilities: logit(p) or log(p).

  For softmax the result is log(p), whose softmax is p again when p sums to 1. [N, K] -> [N, K].
  """
  probs = jnp.clip(probs.astype(jnp.float32), PROB_EPS, 1.0 - PROB_EPS)
  return jnp.log(probs) - jnp.log1p(-probs) if multilabel else jnp.log(probs)


def mean_probability_logits(logits: Sequence[Array], weights: Sequence[float],
                            multilabel: bool) -> Array:
  """Logits of the weighted mean of per-modality probabilities, computed in log space.

  softmax: log p = logsumexp_m(log w_m + log_softmax(l_m)), whose softmax is p (it sums to 1);
  sigmoid (multilabel): logit(p) = logsumexp_m(log w_m + log_sigmoid(l_m))
  - logsumexp_m(log w_m + log_sigmoid(-l_m)). Where every head is confidently wrong, p (or
  1 - p) underflows float32: log / logit of p clipped to PROB_EPS would cap the loss near 16.1
  with a zero gradient, and these stay exact. weights (static, >= 0) are normalised to sum 1;
  a modality of weight 0 is left out rather than given log 0.
  logits: one [N, K] per modality -> [N, K] float32.
  """
  total = float(sum(weights))
  kept = [(w / total, head) for w, head in zip(weights, logits) if w > 0]
  log_w = jnp.log(jnp.asarray([w for w, _ in kept], jnp.float32))[:, None, None]
  stacked = jnp.stack([head.astype(jnp.float32) for _, head in kept])  # [M, N, K]
  if not multilabel:
    return jax.nn.logsumexp(log_w + jax.nn.log_softmax(stacked, axis=-1), axis=0)
  return (jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(stacked), axis=0)
          - jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(-stacked), axis=0))


class FusionMLP(nn.Module):
  """Dense -> ReLU -> dropout per width in `hidden`, then Dense(num_classes) named "logits".

  Paper 000's FusionMLP is hidden=(128, 64), dropout 0.3. With hidden=() the head is a linear
  classifier, and a nonzero `dropout` is applied to its input features instead (dropout ->
  Dense, torch's usual `Sequential(Dropout(p), Linear)` head): paper 001's image-only model
  (ResNet-18 features -> linear, "dropout of 0.5") has nowhere else to put its dropout. A linear
  head that must not drop its inputs (paper 002's CNN, whose dropout comes before the flatten,
  inside the encoder) sets dropout 0. [N, D] -> [N, num_classes].
  """
  num_classes: int
  hidden: Sequence[int] = (128, 64)
  dropout: float = 0.3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if not self.hidden and self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"dense_{i}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)


class LateFusion(nn.Module):
  """A Dense head "<m>_head" per modality; weighted mean of their probabilities.

  features {m: [N, D_m]} -> (mean probabilities [N, K] float32, {"<m>_logits": [N, K]}).
  weights: one per entry of `features`, in its order (None: plain mean); normalised to sum 1.
  """
  num_classes: int
  weights: Sequence[float] | None = None
  multilabel: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    weights = [1.0] * len(features) if self.weights is None else list(self.weights)
    if len(weights) != len(features):
      raise ValueError(f"late fusion got {len(weights)} weights for modalities "
                       f"{list(features)}")
    out, probs = {}, []
    for modality, x in features.items():
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name=f"{modality}_head")(x)
      logits = out[f"{modality}_logits"] = self.perturb(f"{modality}_logits", logits)
      probs.append(class_probabilities(logits, self.multilabel))
    weights = jnp.asarray(weights, jnp.float32)
    return jnp.tensordot(weights / weights.sum(), jnp.stack(probs), axes=1), out


class FiLM(nn.Module):
  """Feature-wise linear modulation of a feature map by a conditioning vector.

  gamma, beta = Dense(2C)(condition); modulated = (1 + gamma) * map + beta, broadcast over
  h, w. With zero_init the Dense kernel starts at zero, so the modulation is the identity at
  initialisation; without it the kernel is Dense's default (LeCun normal), as a randomisation
  test needs (a zero "random" FiLM would be an ablation).
  feature_map [N, h, w, C], condition [N, D] -> (global average of modulated [N, C],
  {"modulated": [N, h, w, C]}).
  """
  dtype: Any = jnp.float32
  zero_init: bool = True

  @nn.compact
  def __call__(self, feature_map: Array, condition: Array) -> tuple[Array, dict[str, Array]]:
    channels = feature_map.shape[-1]
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    gamma_beta = nn.Dense(2 * channels, kernel_init=init, dtype=self.dtype,
                          name="dense")(condition)
    gamma, beta = jnp.split(gamma_beta[:, None, None, :], 2, axis=-1)
    modulated = self.perturb("modulated", (1 + gamma) * feature_map + beta)
    return jnp.mean(modulated, axis=(1, 2)), {"modulated": modulated}


def mlp_on_concat(model: "MultimodalModel", features: Mapping[str, Array],
                  hidden: Sequence[int], train: bool) -> FusionOutput:
  """concat(features) -> "fused" [N, sum D_m] -> FusionMLP(hidden) named "head" -> logits."""
  fused = model.perturb("fused", jnp.concatenate(list(features.values()), axis=-1))
  logits = FusionMLP(model.num_classes, tuple(hidden), model.head_dropout, model.dtype,
                     name="head")(fused, train=train)
  return logits, {"fused": fused}


def concat_fusion(model: "MultimodalModel", features: Mapping[str, Array],
                  out: Mapping[str, Array], *, train: bool) -> FusionOutput:
  """Early fusion (paper 000): FusionMLP(head_hidden) on the concatenated features."""
  return mlp_on_concat(model, features, model.head_hidden, train)


def joint_fusion(model: "MultimodalModel", features: Mapping[str, Array],
                 out: Mapping[str, Array], *, train: bool) -> FusionOutput:
  """Paper 001's head: Dense(joint_hidden) -> ReLU -> dropout -> Dense on the concatenation."""
  return mlp_on_concat(model, features, (model.joint_hidden,), train)


def late_fusion(model: "MultimodalModel", features: Mapping[str, Array],
                out: Mapping[str, Array], *, train: bool) -> FusionOutput:
  """Decision-level fusion; "fused" = mean probabilities, logits = their log / logit.

  The logits come from the heads' logits in log space (`mean_probability_logits`). "fused"
  adds g(fused) - g(mean probabilities), g = `probabilities_to_logits`: zero unperturbed (its
  gradient into the heads cancels exactly), while a perturbation of "fused" moves the logits as
  g of the perturbed probabilities would and gradients with respect to "fused" are g's.
  """
  mean_probs, late_out = LateFusion(model.num_classes, model.late_weights, model.multilabel,
                                    model.dtype, name="late")(features)
  fused = model.perturb("fused", mean_probs)
  weights = model.late_weights or (1.0,) * len(features)
  logits = mean_probability_logits([late_out[f"{m}_logits"] for m in features], weights,
                                   model.multilabel)
  logits += (probabilities_to_logits(fused, model.multilabel)
             - probabilities_to_logits(mean_probs, model.multilabel))
  return logits, {**prefixed("late", late_out), "fused": fused}


def film_fusion(model: "MultimodalModel", features: Mapping[str, Array],
                out: Mapping[str, Array], *, train: bool) -> FusionOutput:
  """FiLM of the image's last feature map by the metadata embedding, then concat fusion.

  "image/<last stage>" in `out` stays un-modulated; "film/modulated" is the modulated map.
  """
  feature_map = out[f"image/{model.image.feature_map_name}"]
  film = FiLM(model.dtype, zero_init=model.film_zero_init, name="film")
  pooled, film_out = film(feature_map, features["meta"])
  logits, fusion_out = mlp_on_concat(model, {**features, "image": pooled}, model.head_hidden,
                                     train)
  return logits, {**prefixed("film", film_out), **fusion_out}


class Fusion(NamedTuple):
  """A fusion function (model, features, out, *, train) -> (logits, fusion out) and the
  modalities it cannot work without."""
  apply: Callable[..., FusionOutput]
  requires: tuple[str, ...] = ()


FUSIONS = {
    "concat": Fusion(concat_fusion),
    "late": Fusion(late_fusion),
    "joint": Fusion(joint_fusion),
    "film": Fusion(film_fusion, requires=("image", "meta")),
}


def check_fusion(name: str, modalities: Sequence[str]) -> Fusion:
  """The registered fusion `name`; ValueError if unknown or if it lacks a modality it needs."""
  if name not in FUSIONS:
    raise ValueError(f"unknown fusion {name!r}; valid fusions: {sorted(FUSIONS)}")
  missing = [m for m in FUSIONS[name].requires if m not in modalities]
  if missing:
    raise ValueError(f"fusion {name!r} requires modalities {list(FUSIONS[name].requires)}, "
                     f"missing {missing} from {list(modalities)}")
  return FUSIONS[name]


def modality_inputs(modality: str, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Any]]:
  """The batch entries one modality's encoder reads, as (x, keyword arguments)."""
  missing = [key for key in BATCH_KEYS[modality] if key not in batch]
  if missing:
    raise KeyError(f"modality {modality!r} needs batch keys {missing}; the batch has "
                   f"{sorted(batch)}")
  if modality == "text":
    return batch["text_ids"], {"attention_mask": batch["text_mask"],
                               "token_type_ids": batch.get("text_type_ids")}
  return batch[modality], {}


class MultimodalModel(nn.Module):
  """Encoders for the modalities present (children named "image", "text", "meta") + fusion.

  __call__(batch, train) -> (logits [N, num_classes] float32, out). The batch is the jaxmm
  batch dict; only the keys of the present modalities are read. out is flat: every encoder
  intermediate prefixed by its modality ("image/stage4", "text/cls", "meta/embedding"), then
  "fused", plus "late/<m>_logits" (late) or "film/modulated" (film). Each is marked with
  `perturb`, so the "perturbations" collection, flattened with "/", has the same keys.
  Encoders are modules with __call__(x, *, train, ...) -> (features, out); an image encoder
  used with FiLM also has `feature_map_name`. late_weights align with `modalities`.
  film_zero_init: FiLM's Dense starts at zero (the identity modulation; `FiLM`).
  Training needs rngs={"dropout": key} and mutable=["batch_stats"].
  """
  num_classes: int
  fusion: str = "concat"
  image: nn.Module | None = None
  text: nn.Module | None = None
  meta: nn.Module | None = None
  head_hidden: Sequence[int] = (128, 64)
  head_dropout: float = 0.3
  joint_hidden: int = 512
  late_weights: Sequence[float] | None = None
  multilabel: bool = False
  dtype: Any = jnp.float32
  film_zero_init: bool = True

  @property
  def modalities(self) -> tuple[str, ...]:
    """Present modalities in the canonical order ("image", "text", "meta")."""
    return tuple(m for m in MODALITIES if getattr(self, m) is not None)

  @nn.compact
  def __call__(self, batch: Mapping[str, Array], *, train: bool
               ) -> tuple[Array, dict[str, Array]]:
    if not self.modalities:
      raise ValueError(f"MultimodalModel needs at least one of {list(MODALITIES)}")
    fusion = check_fusion(self.fusion, self.modalities)
    features, out = {}, {}
    for modality in self.modalities:
      x, kwargs = modality_inputs(modality, batch)
      features[modality], encoder_out = getattr(self, modality)(x, train=train, **kwargs)
      out.update(prefixed(modality, encoder_out))
    logits, fusion_out = fusion.apply(self, features, out, train=train)
    return logits.astype(jnp.float32), {**out, **fusion_out}
