"""Model-parameter randomisation test for saliency maps (Adebayo et al. 2018, "Sanity Checks
for Saliency Maps", Sec. 3.1, cascading randomisation).

Layers are re-initialised from the top (output layer) down, cumulatively, and the map of each
partly random model is compared with the trained model's map by Spearman rank correlation, of
the signed maps and of their absolute values (the paper reports both). A map that explains the
model changes as its layers are randomised: similarity falls; a map that stays similar (as an
edge detector would) does not depend on what the model learnt and fails the check.

Layer groups (`layer_groups`) are found by parameter name, not by dict order: `model.init`
returns its dicts in module-creation (forward) order, but anything that passes the tree through
jax's pytree flattening (jit, `jax.tree.map`, optimizer updates, checkpoint restores) rebuilds
them with sorted keys (e.g. ResNet's "bn1" before "conv1", SmallCNN's
"batch_normalization_*" before "conv2d_*"), so trained params have lost the forward order.
"""
import functools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
import scipy.stats
from flax import traverse_util

from jaxmm.evaluation import roi

Params = Mapping[str, Any]
Path = tuple[str, ...]
Group = tuple[str, tuple[Path, ...]]  # (name, path prefixes into params)
# Forward (input to output) order of MultimodalModel's children: the encoders, which run side
# by side, in the canonical modality order, then the fusion modules. Reversed, the head comes
# first and the image encoder last, so an image map's cascade ends at the image stem.
TOP_LEVEL_ORDER = ("image", "text", "meta", "film", "late", "head")


def natural_key(name: str) -> list:
  """Sort key with digit runs compared as numbers: "layer10" after "layer2"."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def child_groups(tree: Params) -> list[Group]:
  """Each child its own group, natural order with "logits" last (Dense stacks, FiLM, late)."""
  names = sorted(tree, key=lambda k: (k == "logits", natural_key(k)))
  return [(name, ((name,),)) for name in names]


def resnet_groups(tree: Params) -> list[Group]:
  """ResNet forward order: "stem" (conv1 + bn1), "layerS/B" blocks, "fc" if present."""
  blocks = [(f"{stage}/{block}", ((stage, block),))
            for stage in sorted((k for k in tree if k.startswith("layer")), key=natural_key)
            for block in sorted(tree[stage], key=natural_key)]
  fc = [("fc", (("fc",),))] if "fc" in tree else []
  return [("stem", (("conv1",), ("bn1",)))] + blocks + fc


def small_cnn_groups(tree: Params) -> list[Group]:
  """SmallCNN forward order: "convI" (conv2d_I + its batch_normalization_I), "dense_1"."""
  indices = sorted(int(k.rsplit("_", 1)[1]) for k in tree if k.startswith("conv2d_"))
  convs = [(f"conv{i}", ((f"conv2d_{i}",), (f"batch_normalization_{i}",))) for i in indices]
  return convs + ([("dense_1", (("dense_1",),))] if "dense_1" in tree else [])


def bert_groups(tree: Params) -> list[Group]:
  """BERT forward order: "embeddings", "encoder/layer/I", "pooler" if present."""
  layers = [(f"encoder/layer/{i}", (("encoder", "layer", i),))
            for i in sorted(tree["encoder"]["layer"], key=natural_key)]
  pooler = [("pooler", (("pooler",),))] if "pooler" in tree else []
  return [("embeddings", (("embeddings",),))] + layers + pooler


def module_groups(tree: Params) -> list[Group]:
  """A jaxmm module's layer groups in forward order, by the module's parameter names."""
  if "layer1" in tree and "conv1" in tree:
    return resnet_groups(tree)
  if any(k.startswith("conv2d_") for k in tree):
    return small_cnn_groups(tree)
  if "embeddings" in tree and "encoder" in tree:
    return bert_groups(tree)
  return child_groups(tree)


def check_groups(params: Params, groups: Sequence[Group]) -> None:
  """ValueError unless every leaf of params lies under exactly one group's prefixes."""
  counts = {path: 0 for path in traverse_util.flatten_dict(params)}
  for _, prefixes in groups:
    for path in counts:
      counts[path] += sum(path[:len(p)] == p for p in prefixes)
  wrong = {"/".join(path): n for path, n in counts.items() if n != 1}
  if wrong:
    raise ValueError(f"layer groups must cover every parameter once; coverage counts: {wrong}")


def layer_groups(params: Params) -> list[Group]:
  """Layer groups of a MultimodalModel's params, TOP-DOWN (output layer first).

  Forward order: per encoder in TOP_LEVEL_ORDER its layers (ResNet: stem, stage blocks, fc;
  SmallCNN: conv+BN layers, dense; BERT: embeddings, layers, pooler; MLPs: dense layers), then
  "film", "late" heads, the "head" MLP's dense layers; the groups are its reverse. Each group is
  (name, path prefixes), e.g. ("image/stem", (("image", "conv1"), ("image", "bn1"))); together
  they cover every leaf once.
  """
  unknown = sorted(set(params) - set(TOP_LEVEL_ORDER))
  if unknown:
    raise ValueError(f"unknown top-level modules {unknown}; known: {list(TOP_LEVEL_ORDER)}")
  forward = [(f"{top}/{name}", tuple((top,) + p for p in prefixes))
             for top in TOP_LEVEL_ORDER if top in params
             for name, prefixes in module_groups(params[top])]
  groups = forward[::-1]
  check_groups(params, groups)
  return groups


def cascading_randomization(init_params: Params, trained_params: Params,
                            groups: Sequence[Group]) -> list[tuple[str, Params]]:
  """[(groups[i] name, params with groups[0..i] from init_params, the rest trained)].

  init_params: a fresh `model.init` with another key (same tree). Only params change: a
  caller keeps the trained batch_stats, so a randomised BatchNorm layer normalises with the
  trained running statistics and applies its random (init) scale and bias. Leaves are shared,
  not copied, so the list costs little memory.
  """
  init, trained = (traverse_util.flatten_dict(p) for p in (init_params, trained_params))
  if set(init) != set(trained):
    raise ValueError(f"init and trained params differ in paths: "
                     f"{sorted(set(init) ^ set(trained))[:10]}")
  steps, prefixes = [], ()
  for name, group_prefixes in groups:
    prefixes += tuple(group_prefixes)
    flat = {path: init[path] if any(path[:len(p)] == p for p in prefixes) else value
            for path, value in trained.items()}
    steps.append((name, traverse_util.unflatten_dict(flat)))
  return steps


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Spearman correlation of each row pair (Pearson of average ranks, so ties count as in
  scipy.stats.spearmanr). [N, P], [N, P] -> float64 [N]; NaN for a constant row."""
  ra, rb = (scipy.stats.rankdata(v, method="average", axis=-1) for v in (a, b))
  ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (ra * rb).sum(-1) / np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))


def finite_mean(values: np.ndarray) -> float:
  """Mean of the non-NaN values; NaN (no warning) when there is none."""
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float("nan")


def randomization_similarity(reference: Any, randomized: Any,
                             names: Sequence | None = None) -> dict[str, Any]:
  """Per-example Spearman rank correlation of two sets of maps, signed and absolute.

  reference, randomized [N, H, W] -> {"spearman": [N], "spearman_abs": [N] (float64),
  "spearman_mean", "spearman_abs_mean" (floats; means of the non-NaN values), "n", "n_abs"
  (how many values each mean averages)}. An example whose map (either one) holds a NaN or an
  infinity gets NaN similarities, with a RuntimeWarning naming it (`names` [N]: the examples'
  names, default their positions); a constant map gives NaN too (no ranks to correlate).
  """
  a, b = (np.asarray(m, np.float64).reshape(len(m), -1) for m in (reference, randomized))
  broken = roi.nonfinite_maps(a) | roi.nonfinite_maps(b)
  if broken.any():
    roi.warn_nonfinite(broken, np.arange(len(a)) if names is None else names,
                       "examples have a reference or randomised map holding",
                       "their similarity is NaN and left out of the means")
  plain, absolute = rank_correlation(a, b), rank_correlation(np.abs(a), np.abs(b))
  plain[broken], absolute[broken] = np.nan, np.nan
  return {"spearman": plain, "spearman_abs": absolute,
          "spearman_mean": finite_mean(plain), "spearman_abs_mean": finite_mean(absolute),
          "n": int((~np.isnan(plain)).sum()), "n_abs": int((~np.isnan(absolute)).sum())}


def cascading_randomization_test(model, variables: Params, batch: Mapping[str, Any],
                                 targets: Any, method_fn: Callable, key: Any,
                                 groups: Iterable[Group] | None = None,
                                 keep_maps: bool = False,
                                 names: Sequence | None = None) -> list[dict[str, Any]]:
  """Cascading randomisation of `model` (Adebayo et al. 2018): one row per group, top down.

  method_fn(variables, batch, targets) -> maps [N, H, W] (e.g. from
  `saliency.methods.compiled(...)`: lambda v, b, t: fn(v, b, t, key)["raw"]). The reference
  map uses `variables`; row i uses params with groups[0..i] replaced by a fresh
  `model.init(key, batch, train=False)` (`cascading_randomization`). There is no row for the
  unrandomised model (its similarity to the reference is 1 by definition).
  Rows: {"layer", "step", "spearman", "spearman_abs" (means over the examples with a finite
  similarity), "n", "n_abs" (how many), "per_example": {"spearman": [N], "spearman_abs": [N]},
  and "maps" [N, H, W] if keep_maps}. names [N]: the examples' names in the warning about
  non-finite maps (`randomization_similarity`).
  """
  init_params = jax.jit(functools.partial(model.init, train=False))(key, batch)["params"]
  groups = layer_groups(variables["params"]) if groups is None else list(groups)
  reference = np.asarray(method_fn(variables, batch, targets))
  rows = []
  for step, (name, params) in enumerate(
      cascading_randomization(init_params, variables["params"], groups)):
    maps = np.asarray(method_fn({**variables, "params": params}, batch, targets))
    sim = randomization_similarity(reference, maps, names)
    rows.append({"layer": name, "step": step, "spearman": sim["spearman_mean"],
                 "spearman_abs": sim["spearman_abs_mean"], "n": sim["n"], "n_abs": sim["n_abs"],
                 "per_example": {"spearman": sim["spearman"],
                                 "spearman_abs": sim["spearman_abs"]},
                 **({"maps": maps} if keep_maps else {})})
  return rows
