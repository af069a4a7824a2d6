"""Figures of the explanation evaluation, read from the files `jaxmm.evaluation.runner` writes
under DIR/analysis/ (a figure whose inputs are absent is skipped) into DIR/figures/evaluation/.

  agreement_bars       roi_agreement_<method>.png: mean Dice and Spearman per group (class x
                       correct, sex, age group, site) with bootstrap 95% CIs (paper 004 figs. 7-8)
  galleries            gallery_<method>.png: the top and bottom images by Dice, ROI and map
  importance_figure    importance_<method>.png: the importance matrix (Eq. 4, reference split)
                       and each class column minus its mean, reference vs evaluated split
                       (paper 003 fig. 11 II)
  consistency_scatter  consistency_<method>.png: CAM sums vs the selected class's logit
  faithfulness_curves  faithfulness.png: mean deletion / insertion curves, random order dashed
  sanity_curves        sanity.png: similarity to the trained model's map along cascading
                       randomisation
  confounder_figure    confounder.png: images with the artefact, every map, the CAM and FS-CAM
                       of the confounder features, and the maps' mass on the artefact
`evaluation_figures` first removes the figures of these names that an earlier evaluation left.
"""
import csv
import json
import os
from typing import Sequence

import numpy as np

# saliency_figures sets matplotlib's Agg backend before pyplot is imported.
from jaxmm.report.run_figures import read_json
from jaxmm.report.saliency_figures import clear_figures, draw_input, draw_overlay, plt, \
    save_figure
from jaxmm.saliency import runner as saliency_runner

STRATIFICATIONS = ("class x correct", "sex", "age_group", "site")
AGREEMENT_METRICS = ("dice", "spearman")
CORRECTNESS = (("False", "incorrect", "tab:orange"), ("True", "correct", "tab:green"))
CONSISTENCY_VARIANTS = (("cam", "CAM"), ("s_cam", "S-CAM"), ("fs_s_cam_top5", "FS-S-CAM (top 5%)"))
ROI_COLOUR, ARTEFACT_COLOUR = "lime", "cyan"
GALLERY_SIZE = 6
EVALUATION_FIGURES = ("roi_agreement_*.png", "gallery_*.png", "importance_*.png",
                      "consistency_*.png", "faithfulness.png", "sanity.png", "confounder.png")


# ------------------------------------------------------------------ reading

def read_rows(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def number(text) -> float:
  """A CSV field as a float (empty or missing -> NaN)."""
  try:
    return float(text)
  except (TypeError, ValueError):
    return float("nan")


def class_name(class_names: Sequence[str] | None, label) -> str:
  label = int(label)
  return class_names[label] if class_names is not None and 0 <= label < len(class_names) \
      else str(label)


def derived_class_names(analysis: str) -> list[str] | None:
  """The class names in label order, where the analysis files say them (confounder rates)."""
  path = os.path.join(analysis, "confounder.json")
  return list(read_json(path)["rates"]) if os.path.exists(path) else None


def saliency_rows(directory: str, positions: Sequence[int], keys: Sequence[str]) -> dict:
  """The rows of the saliency shards whose "index" is in `positions`, in that order, reading
  only the shards that hold them (a split's maps need not fit in memory)."""
  with open(os.path.join(directory, "manifest.json")) as f:
    manifest = json.load(f)
  count = -(-manifest["num_examples"] // manifest["shard_size"])
  wanted, found = {int(p) for p in positions}, {}
  for shard in range(count):
    with np.load(saliency_runner.shard_file(directory, shard)) as data:
      rows = {int(v): r for r, v in enumerate(data["index"]) if int(v) in wanted}
      for position, r in rows.items():
        found[position] = {k: data[k][r] for k in keys if k in data.files}
  order = [int(p) for p in positions if int(p) in found]
  if not order:
    return {"index": np.zeros(0, int)}
  return {"index": np.asarray(order),
          **{k: np.stack([found[p][k] for p in order]) for k in found[order[0]]}}


# ------------------------------------------------------------------ ROI agreement (paper 004)

def group_bars(ax, rows: list[dict]) -> None:
  """One bar per group: mean with its bootstrap 95% CI."""
  means = np.array([number(r["mean"]) for r in rows])
  errors = np.nan_to_num([[m - number(r["ci_low"]) for m, r in zip(means, rows)],
                          [number(r["ci_high"]) - m for m, r in zip(means, rows)]])
  ax.bar(np.arange(len(rows)), means, yerr=errors, capsize=3, color="tab:blue", alpha=0.8)
  set_group_ticks(ax, [r["group"] for r in rows], [r["n"] for r in rows])


def class_correct_bars(ax, rows: list[dict]) -> None:
  """Per class, the incorrectly and the correctly classified images side by side."""
  split = [r["group"].rsplit(" x ", 1) for r in rows]
  classes = list(dict.fromkeys(c for c, _ in split))
  width = 0.4
  for offset, (flag, label, colour) in zip((-width / 2, width / 2), CORRECTNESS):
    picked = {c: r for (c, f), r in zip(split, rows) if f == flag}
    means = np.array([number(picked[c]["mean"]) if c in picked else np.nan for c in classes])
    low = np.array([number(picked[c]["ci_low"]) if c in picked else np.nan for c in classes])
    high = np.array([number(picked[c]["ci_high"]) if c in picked else np.nan for c in classes])
    ax.bar(np.arange(len(classes)) + offset, means, width, color=colour, label=label,
           yerr=np.nan_to_num([means - low, high - means]), capsize=2)
  counts = {(c, f): r["n"] for (c, f), r in zip(split, rows)}
  set_group_ticks(ax, classes, [f"{counts.get((c, 'False'), 0)}/{counts.get((c, 'True'), 0)}"
                                for c in classes])
  ax.legend(fontsize=8, loc="upper left", ncol=2, title="n = incorrect/correct",
            title_fontsize=8)
  ax.margins(y=0.3)  # room for the legend above the bars


def set_group_ticks(ax, groups: list[str], counts: list) -> None:
  """Group names with their counts; many groups rotated, on one line each."""
  rotate = len(groups) > 7
  separator = " " if rotate else "\n"
  ax.set_xticks(np.arange(len(groups)))
  ax.set_xticklabels([f"{g}{separator}(n={n})" for g, n in zip(groups, counts)], fontsize=8,
                     rotation=45 if rotate else 0, ha="right" if rotate else "center",
                     rotation_mode="anchor" if rotate else "default")


def agreement_bars(summary_rows: list[dict], method: str, path: str) -> str | None:
  """Rows = stratifications, columns = Dice and Spearman; the overall mean dashed."""
  rows = [r for r in summary_rows if r["method"] == method]
  strata = [s for s in STRATIFICATIONS if any(r["stratification"] == s for r in rows)]
  if not strata:
    return None
  fig, axes = plt.subplots(len(strata), len(AGREEMENT_METRICS),
                           figsize=(13, 3.3 * len(strata)), squeeze=False)
  for i, stratum in enumerate(strata):
    for j, metric in enumerate(AGREEMENT_METRICS):
      ax = axes[i, j]
      picked = [r for r in rows if r["stratification"] == stratum and r["metric"] == metric]
      (class_correct_bars if stratum == "class x correct" else group_bars)(ax, picked)
      overall = [r for r in rows if r["stratification"] == "all" and r["metric"] == metric]
      if overall:
        ax.axhline(number(overall[0]["mean"]), color="grey", ls="--", lw=1)
      ax.axhline(0, color="black", lw=0.5)
      ax.set_title(f"{metric} by {stratum} (dashed: all images)", fontsize=9)
      ax.set_ylabel(f"mean {metric}, 95% CI", fontsize=8)
      ax.tick_params(axis="y", labelsize=8)
  fig.suptitle(f"{method}: agreement of the map with the ROI", fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


def gallery_pair(input_ax, map_ax, examples: dict, i: int, row: dict, maps: np.ndarray,
                 signed: bool) -> None:
  """One gallery image: the input with its ROI, and the map with the ROI dashed on it."""
  roi = examples["roi_mask"][i] if "roi_mask" in examples else None
  draw_input(input_ax, examples["image"][i], roi, f"#{int(examples['index'][i])} true "
             f"{row.get('class', '?')}\npred {row.get('predicted', '?')}")
  draw_overlay(map_ax, examples["image"][i], maps[i], signed)
  if roi is not None and roi.any():
    map_ax.contour(roi > 0, levels=[0.5], colors=ROI_COLOUR, linewidths=0.8, linestyles="--")
  map_ax.set_title(f"Dice {number(row.get('dice')):.2f} "
                   f"(t={number(row.get('dice_threshold')):.2f})", fontsize=8)


def galleries(examples: dict, per_image_rows: list[dict], gallery: dict, method: str,
              which: str, path: str, count: int = GALLERY_SIZE) -> str | None:
  """Top and bottom images by Dice: a row of inputs (ROI outlined) over a row of overlays.
  `examples` holds the saliency rows of the gallery's split positions (`saliency_rows`)."""
  maps = examples.get(f"{method}.{which}")
  if maps is None or not len(examples["index"]):
    return None
  maps = maps[:, 0] if maps.ndim == 4 else maps  # multilabel: the first target's map
  signed = bool(np.min(maps) < 0)
  position = {int(v): i for i, v in enumerate(examples["index"])}
  table = {int(r["index"]): r for r in per_image_rows}
  fig, axes = plt.subplots(4, count, figsize=(1.9 * count, 2.1 * 4), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for block, side in enumerate(("top", "bottom")):
    chosen = [int(p) for p in gallery.get(side, []) if int(p) in position][:count]
    for col, split_position in enumerate(chosen):
      gallery_pair(axes[2 * block, col], axes[2 * block + 1, col], examples,
                   position[split_position], table.get(split_position, {}), maps, signed)
    axes[2 * block, 0].text(-0.12, -0.1, f"{side} by Dice", rotation=90, ha="right",
                            va="center", fontsize=10, transform=axes[2 * block, 0].transAxes)
  fig.suptitle(f"{method}: images with the highest and lowest Dice "
               f"(ROI in green, dashed on the maps)", fontsize=10)
  return save_figure(fig, path)


# ------------------------------------------------------------------ feature analysis (paper 003)

def centred_columns(matrix: np.ndarray) -> np.ndarray:
  """Each class column minus its mean over the features (paper 003, fig. 11 II)."""
  matrix = np.asarray(matrix, np.float64)
  return matrix - np.nanmean(matrix, axis=0, keepdims=True)


def importance_heatmap(ax, matrix: np.ndarray, class_names, title: str) -> None:
  top = max(float(np.nanmax(np.abs(matrix))), 1e-12)
  signed = np.nanmin(matrix) < 0
  image = ax.imshow(matrix, aspect="auto", interpolation="nearest",
                    cmap="RdBu_r" if signed else "viridis", vmin=-top if signed else 0, vmax=top)
  ax.set_xticks(np.arange(matrix.shape[1]))
  ax.set_xticklabels([class_name(class_names, c) for c in range(matrix.shape[1])], fontsize=8,
                     rotation=45, ha="right")
  ax.set_ylabel("feature (channel)", fontsize=8)
  ax.tick_params(axis="y", labelsize=8)
  ax.set_title(title, fontsize=9)
  plt.colorbar(image, ax=ax, fraction=0.08, pad=0.03).ax.tick_params(labelsize=8)


def importance_figure(matrices: dict, class_names, method: str, path: str,
                      splits: tuple[str, str] = ("train", "test"),
                      overfitting: dict | None = None) -> str:
  """The reference split's Eq. 4 matrix [F, C] and, per class, its centred column on the
  reference and on the evaluated split."""
  reference = np.asarray(matrices["reference_eq4"])
  evaluated = matrices.get("evaluated_eq4")
  classes = reference.shape[1]
  cols = 2 if classes <= 8 else 3
  rows = -(-classes // cols)
  fig = plt.figure(figsize=(4.2 + 3.0 * cols, max(4.5, 2.0 * rows)))
  grid = fig.add_gridspec(rows, 1 + cols, width_ratios=[1.5] + [1] * cols)
  importance_heatmap(fig.add_subplot(grid[:, 0]), reference, class_names,
                     f"importance (Eq. 4), {splits[0]} split")
  x = np.arange(reference.shape[0])
  for c in range(classes):
    ax = fig.add_subplot(grid[c // cols, 1 + c % cols])
    ax.plot(x, centred_columns(reference)[:, c], color="tab:blue", lw=1, label=splits[0])
    if evaluated is not None:
      ax.plot(x, centred_columns(evaluated)[:, c], color="tab:red", lw=1, ls="--",
              label=splits[1])
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title(class_name(class_names, c), fontsize=9)
    ax.tick_params(labelsize=8)
    if c == 0:
      ax.legend(fontsize=8)
  title = f"{method}: importance matrix; right: column minus its mean, per class (x = feature)"
  if overfitting and overfitting.get("relative_l2") is not None:
    title += f"\n{splits[0]} vs {splits[1]}: relative L2 {overfitting['relative_l2']:.3f}"
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


def consistency_title(name: str, rows: list[dict], variant: str, sums, logit) -> str:
  """The variant's correlation from consistency.csv (Pearson computed here if it is absent)."""
  row = next((r for r in rows if r.get("variant") == variant), None)
  if row is None:
    return f"{name}\npearson r = {np.corrcoef(sums, logit)[0, 1]:.3f} (n = {len(sums)})"
  # The correlation's name is in "correlation"; older tables held it in "method".
  correlation = row.get("correlation") or row.get("method")
  return (f"{name}\n{correlation} r = {number(row['r']):.3f}, p = {number(row['p']):.2g} "
          f"(n = {row.get('n', len(sums))})")


def consistency_scatter(per_example: dict, consistency_rows: list[dict], class_names,
                        method: str, path: str) -> str | None:
  """Sum of class activation vs the selected class's logit, one panel per CAM variant,
  points coloured by the selected class (paper 003 tables I and III)."""
  present = [(k, name) for k, name in CONSISTENCY_VARIANTS if f"sum.{k}" in per_example]
  if not present:
    return None
  logit, target = np.asarray(per_example["target_logit"]), np.asarray(per_example["target"])
  fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.8), squeeze=False)
  for ax, (key, name) in zip(axes[0], present):
    sums = np.asarray(per_example[f"sum.{key}"])
    for c in np.unique(target):
      ax.scatter(sums[target == c], logit[target == c], s=8, alpha=0.6,
                 label=class_name(class_names, c))
    ax.set_title(consistency_title(name, consistency_rows, key, sums, logit), fontsize=9)
    ax.set_xlabel(f"sum of the {name}", fontsize=8)
    ax.set_ylabel("logit of the selected class", fontsize=8)
    ax.tick_params(labelsize=8)
  axes[0, -1].legend(fontsize=8, markerscale=2, title="selected class", title_fontsize=8,
                     bbox_to_anchor=(1.02, 1), loc="upper left")
  fig.suptitle(f"{method}: class activation vs logit", fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ faithfulness and sanity

def faithfulness_curves(rows: list[dict], path: str) -> str:
  """Mean deletion and insertion curves (target probability vs fraction of pixels
  perturbed, most salient first); the random pixel order dashed."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, mode, better in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
    for i, row in enumerate(rows):
      curve = np.asarray(json.loads(row[f"{mode}_curve"]), np.float64)
      random = row["method"] == "random"
      ax.plot(np.linspace(0, 1, len(curve)), curve, ls="--" if random else "-",
              color="black" if random else f"C{i}",
              label=f"{row['method']} (AUC {number(row[f'{mode}_auc']):.3f})")
    ax.set_title(f"{mode} ({better} AUC = more faithful)", fontsize=9)
    ax.set_xlabel("fraction of pixels perturbed", fontsize=8)
    ax.set_ylabel("probability of the target class", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
  n = rows[0].get("n") if rows else None
  fig.suptitle("Deletion / insertion" + (f", mean over {n} images" if n else ""), fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


def sanity_curves(rows: list[dict], path: str) -> str:
  """Spearman correlation with the trained model's map as layers are randomised, top down."""
  methods = list(dict.fromkeys(r["method"] for r in rows))
  layers = {int(r["step"]): r["layer"] for r in rows}
  steps = sorted(layers)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, key, label in zip(axes, ("spearman", "spearman_abs"), ("signed maps", "|maps|")):
    for method in methods:
      picked = sorted((int(r["step"]), number(r[key])) for r in rows if r["method"] == method)
      ax.plot([s for s, _ in picked], [v for _, v in picked], marker="o", ms=3, label=method)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(steps)
    ax.set_xticklabels([layers[s] for s in steps], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("randomised from the output down to layer", fontsize=8)
    ax.set_ylabel("Spearman with the trained map", fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(f"cascading randomisation, {label}", fontsize=9)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ the confounder

def class_cam_rows(examples: dict) -> dict:
  """Example row -> (class CAM, FS-CAM); "ifa_index" names the examples they belong to."""
  if "class_cam" not in examples:
    return {}
  ifa_index = examples.get("ifa_index", examples["index"][:len(examples["class_cam"])])
  row_of = {int(v): i for i, v in enumerate(examples["index"])}
  return {row_of[int(v)]: (examples["class_cam"][j], examples["class_fs_cam"][j])
          for j, v in enumerate(ifa_index) if int(v) in row_of}


def draw_confounder_input(ax, examples: dict, i: int, title: str) -> None:
  roi = examples["roi_mask"][i] if "roi_mask" in examples else None
  draw_input(ax, examples["image"][i], roi, title)
  mask = examples.get("confounder_mask")
  if mask is not None and mask[i].any():
    ax.contour(mask[i] > 0, levels=[0.5], colors=ARTEFACT_COLOUR, linewidths=1.2)


def mass_bars(ax, finding: dict) -> None:
  """Per method: positive map mass on the artefact (images with it) vs the same region on
  same-class images without it (control, confounder.control_pairs); the artefact's area is
  what a uniform map would put there."""
  rows = [r for r in finding.get("methods", []) if r.get("mass_on_artefact") is not None]
  x, width = np.arange(len(rows)), 0.38
  ax.bar(x - width / 2, [r["mass_on_artefact"] for r in rows], width, color="tab:red",
         label="on the artefact (images with it)")
  ax.bar(x + width / 2, [r.get("control_mass") or 0 for r in rows], width, color="tab:gray",
         label="control (same region, same-class images without it)")
  for xi, r in zip(x, rows):
    if r.get("mass_p") is not None:
      top = max(r["mass_on_artefact"], r.get("control_mass") or 0)
      ax.text(xi, top, f"p={r['mass_p']:.2g}", ha="center", va="bottom", fontsize=8)
  if rows and rows[0].get("artefact_area") is not None:
    ax.axhline(rows[0]["artefact_area"], color="black", ls="--", lw=1, label="artefact area")
  ax.set_xticks(x)
  ax.set_xticklabels([r["method"] for r in rows], fontsize=8)
  ax.set_ylabel("share of positive map mass", fontsize=8)
  ax.tick_params(axis="y", labelsize=8)
  ax.margins(y=0.45)  # room for the legend and the p-values above the bars
  ax.legend(fontsize=8, loc="upper left", ncol=3)
  ax.set_title(f"mass on the artefact, class {finding.get('affected_class', '?')}", fontsize=9)


def feature_bars(ax, features: dict) -> None:
  """The confounder features' FS-CAM vs the full CAM: mass share on the artefact."""
  values = [features.get("fs_fs_cam_mass") or 0, features.get("fs_cam_mass") or 0]
  ax.bar([0, 1], values, color=["tab:purple", "tab:gray"], width=0.6)
  if features.get("fs_area") is not None:
    ax.axhline(features["fs_area"], color="black", ls="--", lw=1, label="artefact area")
    ax.legend(fontsize=8, loc="upper right")
  ax.set_xticks([0, 1])
  ax.set_xticklabels(["FS-CAM of the\nconfounder features", "full CAM"], fontsize=8)
  ax.tick_params(axis="y", labelsize=8)
  ax.margins(y=0.2)
  p = features.get("fs_p")
  ax.set_title(f"{features.get('method', '')}: features {features.get('features')} of "
               f"{features.get('num_features')}" + (f", p={p:.2g}" if p is not None else ""),
               fontsize=9)


def confounder_row(fig, grid, i: int, examples: dict, methods: list, cams: dict,
                   class_names) -> list:
  """One example: the input, each method's map, the CAM and FS-CAM (signed) when present."""
  columns = 1 + len(methods) + 2 * bool(cams)
  axes = [fig.add_subplot(grid[i, c]) for c in range(columns)]
  draw_confounder_input(axes[0], examples, i, f"#{int(examples['index'][i])} "
                        f"{class_name(class_names, examples['label'][i])}")
  for ax, method in zip(axes[1:], methods):
    maps = examples[f"{method}.normalized"]
    draw_overlay(ax, examples["image"][i], maps[i], bool(np.min(maps) < 0))
  for ax, cam in zip(axes[1 + len(methods):], cams.get(i, ())):
    draw_overlay(ax, examples["image"][i], np.asarray(cam, np.float32), signed=True)
  for ax in axes[1 + len(methods):]:
    ax.axis("off")
  return axes


def shown_images(examples: dict, n: int, class_names) -> str:
  """What the first `n` rows are: 'images of <affected> with the artefact' when they are all
  of the affected class; else the runner's order (affected class first, then the others)."""
  if "affected_class" not in examples:
    return "images with the artefact (each row names its class)"
  affected = int(examples["affected_class"])
  if {int(v) for v in np.asarray(examples["label"])[:n]} <= {affected}:
    return f"images of {class_name(class_names, affected)} with the artefact"
  return (f"images with the artefact, affected class {class_name(class_names, affected)} "
          f"first (each row names its class)")


def confounder_figure(examples: dict, finding: dict | None, class_names, path: str,
                      max_examples: int = 6) -> str:
  """Rows = images with the confounder (the affected class's first; each titled with its
  class): the input (ROI and artefact outlined), each method's map, the CAM and FS-CAM of the
  confounder features; below, the mass on the artefact."""
  methods = [k[:-len(".normalized")] for k in examples if k.endswith(".normalized")]
  cams = class_cam_rows(examples)
  n = min(max_examples, len(examples["index"]))
  columns = 1 + len(methods) + 2 * bool(cams)
  features = (finding or {}).get("features")
  strip = bool(finding and any(r.get("mass_on_artefact") is not None
                               for r in finding.get("methods", [])))
  fig = plt.figure(figsize=(max(2.0 * columns, 9), 2.1 * n + 3.3 * strip))
  grid = fig.add_gridspec(n + strip, columns, height_ratios=[1] * n + [1.6] * strip)
  affected = class_name(class_names, examples["affected_class"]) \
      if "affected_class" in examples else "?"
  for i in range(n):
    axes = confounder_row(fig, grid, i, examples, methods, cams, class_names)
    if i == 0:
      axes[0].set_title(f"ROI (green), artefact (cyan)\n{axes[0].get_title()}", fontsize=8)
      headers = methods + [f"CAM of {affected}", "FS-CAM of the\nconfounder features"]
      for ax, header in zip(axes[1:], headers):
        ax.set_title(header, fontsize=9)
  if strip:
    split = columns - 2 if features and columns > 3 else columns
    mass_bars(fig.add_subplot(grid[n, :split]), finding)
    if split < columns:
      feature_bars(fig.add_subplot(grid[n, split:]), features)
  fig.suptitle(f"Confounder: {shown_images(examples, n, class_names)} and their maps "
               f"(CAM and FS-CAM: {(features or {}).get('method', 'IFA')}, signed)", fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


# ------------------------------------------------------------------ every figure

def roi_figures(analysis: str, split: str, out_dir: str) -> list:
  folder = os.path.join(analysis, "roi_agreement")
  if not os.path.exists(os.path.join(folder, "summary.csv")):
    return []
  summary = read_rows(os.path.join(folder, "summary.csv"))
  written = []
  for method in dict.fromkeys(r["method"] for r in summary):
    written.append(agreement_bars(summary, method, os.path.join(out_dir,
                                                                f"roi_agreement_{method}.png")))
  written += gallery_figures(analysis, split, out_dir)
  return [p for p in written if p]


def gallery_figures(analysis: str, split: str, out_dir: str) -> list:
  folder = os.path.join(analysis, "roi_agreement")
  saliency_dir = saliency_directory(analysis, split)
  agreement_path = os.path.join(folder, "agreement.json")
  if not (os.path.exists(agreement_path) and
          os.path.exists(os.path.join(saliency_dir, "manifest.json"))):
    return []
  agreement = read_json(agreement_path)
  which = agreement.get("maps", "normalized")
  written = []
  for method, by_metric in agreement.get("galleries", {}).items():
    table_path = os.path.join(folder, f"{method}_per_image.csv")
    gallery = by_metric.get("dice", {})
    if not os.path.exists(table_path) or not gallery:
      continue
    positions = [int(p) for side in ("top", "bottom") for p in gallery.get(side, [])[:GALLERY_SIZE]]
    try:
      examples = saliency_rows(saliency_dir, positions, ("image", "roi_mask", f"{method}.{which}"))
    except FileNotFoundError:  # an unfinished saliency directory: no galleries
      return written
    written.append(galleries(examples, read_rows(table_path), gallery, method, which,
                             os.path.join(out_dir, f"gallery_{method}.png")))
  return [p for p in written if p]


def ifa_figures(analysis: str, class_names, split: str, out_dir: str) -> list:
  root = os.path.join(analysis, "ifa")
  written = []
  for method in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    folder = os.path.join(root, method)
    optional = lambda name, read: read(os.path.join(folder, name)) \
        if os.path.exists(os.path.join(folder, name)) else None
    matrices = optional("importance.npz", lambda p: dict(np.load(p)))
    if matrices is not None and "reference_eq4" in matrices:
      reference = (optional("distribution.json", read_json) or {}).get("split", "reference")
      written.append(importance_figure(matrices, class_names, method,
                                       os.path.join(out_dir, f"importance_{method}.png"),
                                       (reference, split), optional("overfitting.json", read_json)))
    per_example = optional("per_example.npz", lambda p: dict(np.load(p)))
    if per_example is not None:
      written.append(consistency_scatter(per_example, optional("consistency.csv", read_rows) or [],
                                         class_names, method,
                                         os.path.join(out_dir, f"consistency_{method}.png")))
  return [p for p in written if p]


def curve_figures(analysis: str, out_dir: str) -> list:
  written = []
  path = os.path.join(analysis, "faithfulness.csv")
  if os.path.exists(path) and (rows := read_rows(path)):
    written.append(faithfulness_curves(rows, os.path.join(out_dir, "faithfulness.png")))
  path = os.path.join(analysis, "sanity.csv")
  if os.path.exists(path) and (rows := read_rows(path)):
    written.append(sanity_curves(rows, os.path.join(out_dir, "sanity.png")))
  return written


def confounder_figures(analysis: str, class_names, out_dir: str) -> list:
  path = os.path.join(analysis, "confounder_examples.npz")
  if not os.path.exists(path):
    return []
  examples = dict(np.load(path))
  if not len(examples.get("index", ())) or "image" not in examples:
    return []
  finding_path = os.path.join(analysis, "confounder.json")
  finding = read_json(finding_path) if os.path.exists(finding_path) else None
  return [confounder_figure(examples, finding, class_names,
                            os.path.join(out_dir, "confounder.png"))]


def saliency_directory(analysis: str, split: str) -> str:
  """Where the evaluated maps are: the evaluation summary says; else saliency/<split>/."""
  summary = os.path.join(analysis, "explanation_evaluation.json")
  if os.path.exists(summary):
    with open(summary) as f:
      relative = json.load(f).get("saliency_directory")
    if relative:
      return os.path.join(os.path.dirname(analysis), relative)
  return os.path.join(analysis, "saliency", split)


def evaluation_figures(workdir: str, class_names: Sequence[str] | None,
                       split: str = "test") -> list[str]:
  """Every figure whose inputs are in `workdir`/analysis/, written to
  `workdir`/figures/evaluation/ (after clearing those of an earlier evaluation); returns the
  written paths. `class_names` in label order
  (None: taken from the analysis files where they say them)."""
  analysis = os.path.join(workdir, "analysis")
  out_dir = os.path.join(workdir, "figures", "evaluation")
  clear_figures(out_dir, EVALUATION_FIGURES)
  if class_names is None:
    class_names = derived_class_names(analysis)
  return (roi_figures(analysis, split, out_dir) +
          ifa_figures(analysis, class_names, split, out_dir) +
          curve_figures(analysis, out_dir) +
          confounder_figures(analysis, class_names, out_dir))
