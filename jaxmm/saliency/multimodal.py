"""Attribution of one prediction of a fused model to each of its modalities.

One Integrated Gradients path moves every modality together from its baseline to the input:
the image (pixels, black baseline), the text (the BERT embedding output "text/embedding_output",
from the embedding of a reference sequence in which every real token but [CLS] / [SEP] is
[PAD], as captum's BERT tutorial does) and the encoded metadata vector (zeros: z-scored age at
the training mean, no category). By completeness the attributions of all modalities sum to
F(x) - F(baseline), so each modality's share of the total is meaningful; the gap is reported.
Token attributions sum over the embedding axis; metadata attributions sum each field's one-hot
columns back to one value per original field.
"""
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxmm.saliency import gradients
from jaxmm.saliency import model_fns

# Attribution input of each modality: a batch entry or the intermediate replaced on the path.
MODALITY_INPUTS = {"image": "image", "text": "text/embedding_output", "meta": "meta"}


def reference_token_ids(ids: jax.Array, mask: jax.Array, pad_id: int,
                        keep_ids: Sequence[int]) -> jax.Array:
  """The reference sequence: real tokens replaced by `pad_id`, except those in `keep_ids`
  ([CLS], [SEP]); padding positions unchanged. int [N, L] -> int [N, L]."""
  keep = jnp.isin(ids, jnp.asarray(list(keep_ids), ids.dtype)) | (mask == 0)
  return jnp.where(keep, ids, jnp.asarray(pad_id, ids.dtype))


def field_attributions(columns: jax.Array, fields: Sequence[tuple[str, slice]]) -> jax.Array:
  """[N, D] column attributions -> [N, F]: one value per field, its columns summed."""
  return jnp.stack([columns[:, s].sum(-1) for _, s in fields], axis=-1)


def modality_baselines(apply: model_fns.ApplyFn, batch: Mapping[str, jax.Array],
                       modalities: Sequence[str], image_baseline: Any = 0.0,
                       meta_baseline: Any = 0.0, pad_id: int = 0,
                       keep_ids: Sequence[int] = (101, 102)) -> dict[str, jax.Array]:
  """The path's start for each modality's attribution input (see the module docstring)."""
  out = {}
  for m in modalities:
    key = MODALITY_INPUTS[m]
    if m == "text":
      ref = dict(batch, text_ids=reference_token_ids(batch["text_ids"], batch["text_mask"],
                                                     pad_id, keep_ids))
      out[key] = model_fns.inputs_of(apply, ref, [key])[key]
    else:
      value = image_baseline if m == "image" else meta_baseline
      out[key] = jnp.broadcast_to(jnp.asarray(value, batch[key].dtype), batch[key].shape)
  return out


def multimodal_integrated_gradients(
    apply: model_fns.ApplyFn, batch: Mapping[str, jax.Array], targets: jax.Array, *,
    modalities: Sequence[str], key=None, image_baseline: Any = 0.0, meta_baseline: Any = 0.0,
    pad_id: int = 0, keep_ids: Sequence[int] = (101, 102),
    meta_fields: Sequence[tuple[str, slice]] | None = None, steps: int = 50,
    rule: str = "riemann_trapezoid", chunk_size: int = 16, score: str = "logit",
    multilabel: bool = False) -> dict[str, jax.Array]:
  """Joint IG over `modalities`; returns (N examples, M modalities in the given order):
    "image" [N, H, W, C], "text_tokens" [N, L] (0 at padding), "meta_columns" [N, D],
    "meta_fields" [N, F] (when meta_fields is given), "modality_totals" [N, M] (signed sums),
    "modality_shares" [N, M] (|total| / sum of |totals|), and the completeness entries of
    `gradients.completeness_gap` ([N] each).
  """
  del key
  keys = [MODALITY_INPUTS[m] for m in modalities]
  f = model_fns.input_function(apply, batch, keys)
  x = model_fns.inputs_of(apply, batch, keys)
  baseline = modality_baselines(apply, batch, modalities, image_baseline, meta_baseline,
                                pad_id, keep_ids)
  attr = gradients.integrated_gradients(f, x, targets, baseline=baseline, steps=steps,
                                        rule=rule, chunk_size=chunk_size, score=score,
                                        multilabel=multilabel)
  n = targets.shape[0]
  totals = jnp.stack([attr[k].reshape(n, -1).sum(-1) for k in keys], axis=-1)
  result = {"modality_totals": totals,
            "modality_shares": jnp.abs(totals) / jnp.maximum(
                jnp.abs(totals).sum(-1, keepdims=True), 1e-12),
            **gradients.completeness_gap(f, x, baseline, targets, attr, score, multilabel)}
  if "image" in modalities:
    result["image"] = attr["image"]
  if "text" in modalities:
    result["text_tokens"] = attr[MODALITY_INPUTS["text"]].sum(-1) * batch["text_mask"]
  if "meta" in modalities:
    result["meta_columns"] = attr["meta"]
    if meta_fields is not None:
      result["meta_fields"] = field_attributions(attr["meta"], meta_fields)
  return result
