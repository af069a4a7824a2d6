"""Saliency figures from a saliency directory (`jaxmm.saliency.runner` output).

  method_panels   one row per example: the input (ROI outlined when known) and one overlay per
                  method; CAMs on a sequential colormap, signed maps on a diverging one
  top_k_panels    multilabel: the maps of an example's top-k labels side by side
  token_plot      report tokens coloured by their attribution (diverging)
  modality_bars   multimodal IG: each modality's share and the metadata field attributions
Every figure is written atomically as PNG into the given folder. Each writer of figures/
(this module's `saliency_figures` and those of run_figures, baselines_figures, shap_figures,
fairness_figures, evaluation_figures) first clears the figures it owns (`clear_figures`), so a
folder holds only the figures of its current inputs.
"""
import glob
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxmm.data.atomic import write_figure_atomic  # noqa: E402

SIGNED_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "inferno"
OVERLAY_ALPHA = 0.55
DISPLAY_PERCENTILE = 99
# The names `saliency_figures` draws into its folder.
SALIENCY_FIGURES = ("methods.png", "top_k_*.png", "modalities.png", "tokens_*.png")


def save_figure(fig, path: str) -> str:
  """Writes `fig` as PNG to `path` atomically and closes it (also when drawing fails)."""
  try:
    return write_figure_atomic(fig, path, format="png", dpi=110, bbox_inches="tight")
  finally:
    plt.close(fig)


def clear_figures(out_dir: str, patterns: Sequence[str]) -> list[str]:
  """Removes the files of `out_dir` itself (not of its subfolders) whose names match a glob
  pattern; returns their paths. A writer clears the names it owns before drawing: a figure of
  earlier inputs that it does not draw again (a model no longer trained) is not left behind,
  a writer stopped midway leaves only figures of the current inputs, and the other writers'
  files of a shared folder are kept."""
  removed = set()
  for pattern in patterns:
    for path in glob.glob(os.path.join(glob.escape(out_dir), pattern)):
      if os.path.isfile(path):
        os.remove(path)
        removed.add(path)
  return sorted(removed)


def is_signed(name: str, data: dict) -> bool:
  return bool(np.min(data[f"{name}.normalized"]) < 0)


def display_image(image: np.ndarray) -> np.ndarray:
  return image[..., 0] if image.shape[-1] == 1 else image


def draw_overlay(ax, image: np.ndarray, saliency: np.ndarray, signed: bool) -> None:
  """The image in grey (for contrast) under the map: signed maps on a diverging colormap
  centred at 0, [0, 1] maps on a sequential one."""
  grey = display_image(image).astype(np.float32)
  grey = grey.mean(-1) if grey.ndim == 3 else grey
  ax.imshow(grey, cmap="gray")
  # Signed maps are shown up to their 99th percentile of |value| (a display choice only: a
  # few extreme pixels would otherwise wash the map out).
  top = max(float(np.percentile(np.abs(saliency), DISPLAY_PERCENTILE)), 1e-6)
  kwargs = dict(cmap=SIGNED_CMAP, vmin=-top, vmax=top) if signed else dict(
      cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1)
  ax.imshow(saliency, alpha=OVERLAY_ALPHA, **kwargs)
  ax.axis("off")


def draw_input(ax, image: np.ndarray, roi: np.ndarray | None, title: str) -> None:
  ax.imshow(display_image(image), cmap="gray" if image.shape[-1] == 1 else None)
  if roi is not None and roi.any():
    ax.contour(roi > 0, levels=[0.5], colors="lime", linewidths=1.0)
  ax.set_title(title, fontsize=8)
  ax.axis("off")


def example_title(data: dict, i: int, class_names: Sequence[str]) -> str:
  pred = int(np.argmax(data["logits"][i]))
  label = data["label"][i]
  if np.ndim(label) == 0:
    return f"true {class_names[int(label)]}, pred {class_names[pred]}"
  return f"top {class_names[pred]}"


def method_panels(data: dict, methods: Sequence[str], class_names: Sequence[str], path: str,
                  max_examples: int = 8) -> str:
  """Input + one overlay per method for the first `max_examples` examples."""
  n = min(max_examples, len(data["index"]))
  methods = [m for m in methods if f"{m}.normalized" in data and
             data[f"{m}.normalized"].ndim == 3]
  fig, axes = plt.subplots(n, 1 + len(methods), figsize=(2.0 * (1 + len(methods)), 2.1 * n),
                           squeeze=False)
  for i in range(n):
    draw_input(axes[i, 0], data["image"][i], data["roi_mask"][i] if "roi_mask" in data else None,
               example_title(data, i, class_names))
    for j, m in enumerate(methods):
      draw_overlay(axes[i, j + 1], data["image"][i], data[f"{m}.normalized"][i],
                   is_signed(m, data))
      if i == 0:
        axes[i, j + 1].set_title(m, fontsize=9)
  return save_figure(fig, path)


def top_k_panels(data: dict, method: str, class_names: Sequence[str], path: str,
                 max_examples: int = 4) -> str:
  """Multilabel: per example, the input and the map of each of its top-k labels. The input's
  outline is the saved roi_mask: with a mask per class (synthetic_cxr) the first label's own
  (saliency.runner.explained_roi_mask), which its title names."""
  maps = data[f"{method}.normalized"]  # [N, k, H, W]
  n, k = min(max_examples, maps.shape[0]), maps.shape[1]
  fig, axes = plt.subplots(n, 1 + k, figsize=(2.0 * (1 + k), 2.1 * n), squeeze=False)
  signed = is_signed(method, data)
  for i in range(n):
    roi = data["roi_mask"][i] if "roi_mask" in data else None
    title = str(data["id"][i]) if "id" in data else f"#{data['index'][i]}"
    if roi is not None and roi.any():
      title += f"\nROI: {class_names[int(data['targets'][i, 0])]}"
    draw_input(axes[i, 0], data["image"][i], roi, title)
    for j in range(k):
      label = int(data["targets"][i, j])
      prob = 1 / (1 + np.exp(-data["logits"][i, label]))
      draw_overlay(axes[i, j + 1], data["image"][i], maps[i, j], signed)
      axes[i, j + 1].set_title(f"{class_names[label]} p={prob:.2f}", fontsize=8)
  return save_figure(fig, path)


def token_plot(tokens: Sequence[str], attributions: np.ndarray, path: str,
               title: str = "", per_line: int = 10) -> str:
  """Tokens as text boxes coloured by attribution / max |attribution| (blue -, red +)."""
  keep = [i for i, t in enumerate(tokens) if t not in ("[PAD]",)]
  values = np.asarray(attributions)[keep]
  scale = max(float(np.abs(values).max()), 1e-12)
  rows = -(-len(keep) // per_line)
  fig, ax = plt.subplots(figsize=(14, 0.45 * rows + 0.6))
  cmap = plt.get_cmap(SIGNED_CMAP)
  for n, (i, v) in enumerate(zip(keep, values)):
    ax.text((n % per_line) / per_line, 1 - (n // per_line + 0.5) / rows, tokens[i],
            fontsize=9, ha="left", va="center", color="white" if abs(v) > 0.6 * scale else "black",
            bbox=dict(facecolor=cmap(0.5 + 0.5 * v / scale), edgecolor="none", pad=1.5))
  ax.set_title(title, fontsize=9)
  ax.axis("off")
  return save_figure(fig, path)


def modality_bars(shares: np.ndarray, modalities: Sequence[str], path: str,
                  field_values: np.ndarray | None = None,
                  field_names: Sequence[str] | None = None) -> str:
  """Mean |share| of each modality over the examples, and mean metadata field attributions."""
  panels = 1 + (field_values is not None)
  fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3), squeeze=False)
  axes[0, 0].bar(list(modalities), np.asarray(shares).mean(0), color="tab:gray")
  axes[0, 0].set_ylabel("mean share of |IG total|")
  if field_values is not None:
    mean = np.asarray(field_values).mean(0)
    names = list(field_names) if field_names is not None else [f"field {i}"
                                                               for i in range(len(mean))]
    axes[0, 1].barh(names, mean, color=np.where(mean >= 0, "tab:red", "tab:blue"))
    axes[0, 1].set_xlabel("mean IG attribution (target logit)")
  return save_figure(fig, path)


def saliency_figures(data: dict, methods: Sequence[str], class_names: Sequence[str],
                     modalities: Sequence[str], out_dir: str,
                     meta_field_names: Sequence[str] | None = None,
                     max_examples: int = 8) -> list[str]:
  """Every figure that applies to the saliency data (after clearing those of earlier data);
  returns the written paths."""
  clear_figures(out_dir, SALIENCY_FIGURES)
  written = []
  image_methods = [m for m in methods if f"{m}.normalized" in data]
  multilabel = data["targets"].ndim == 2
  if image_methods and "image" in data:
    if multilabel:
      for m in image_methods:
        written.append(top_k_panels(data, m, class_names,
                                    os.path.join(out_dir, f"top_k_{m}.png"), max_examples))
    else:
      written.append(method_panels(data, image_methods, class_names,
                                   os.path.join(out_dir, "methods.png"), max_examples))
  if "multimodal_ig.modality_shares" in data:
    shares = data["multimodal_ig.modality_shares"]
    fields = data.get("multimodal_ig.meta_fields")
    if multilabel:
      shares = shares[:, 0]
      fields = fields[:, 0] if fields is not None else None
    written.append(modality_bars(shares, modalities, os.path.join(out_dir, "modalities.png"),
                                 fields, meta_field_names))
  if "multimodal_ig.text_tokens" in data and "tokens" in data:
    tokens = data["multimodal_ig.text_tokens"]
    for i in range(min(3, len(tokens))):
      # A multilabel example's first (top-1) target; its class is named either way.
      values = tokens[i, 0] if multilabel else tokens[i]
      target = int(data["targets"][i, 0] if multilabel else data["targets"][i])
      written.append(token_plot(list(data["tokens"][i]), values,
                                os.path.join(out_dir, f"tokens_{i}.png"),
                                title=f"example {int(data['index'][i])}: attributions to "
                                      f"{class_names[target]}"))
  return written
