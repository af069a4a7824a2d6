"""Figures of the fairness analysis, read from DIR/analysis/fairness/fairness.json (written by
`jaxmm.evaluation.fairness_runner`) into DIR/figures/fairness/:

  accuracy_bars   accuracy_<family>_<model>.png: accuracy per category with its bootstrap
                  CI, one panel per attribute (sex, age group, site), the model's overall
                  accuracy dashed (paper 000 figs. 20-22), for each headline model
  forest_plot     headline_ci_<family>.png: accuracy, macro-F1 and ROC-AUC of every model of
                  a family with their bootstrap CIs, fusion models in blue
The CIs are labelled with the level fairness.json records (config.fairness.confidence, 95% by
default). `fairness_figures` first removes the figures of these names that an earlier analysis
left.
"""
import json
import math
import os
import re

import numpy as np

from jaxmm.evaluation import stats
# saliency_figures sets matplotlib's Agg backend before pyplot is imported.
from jaxmm.report.saliency_figures import clear_figures, plt, save_figure

METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "roc_auc": "ROC-AUC"}
KIND_COLOURS = {"fusion": "tab:blue"}
OTHER_COLOUR = "tab:gray"
FAIRNESS_FIGURES = ("accuracy_*.png", "headline_ci_*.png")


def number(value) -> float:
  """A JSON value as a float (null -> NaN)."""
  return math.nan if value is None else float(value)


def interval_name(result: dict) -> str:
  """'bootstrap 80%': the kind and level of fairness.json's intervals (`result`); 'bootstrap'
  when no level is recorded."""
  confidence = result.get("config", {}).get("confidence")
  return "bootstrap" if confidence is None else f"bootstrap {stats.level_percent(confidence)}"


def file_part(name: str) -> str:
  """A model or family name made safe for a file name."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def interval_errors(estimates, lows, highs) -> np.ndarray:
  """[2, n] error-bar lengths below and above each estimate (0 where the CI is unknown)."""
  estimates = np.asarray(estimates, np.float64)
  return np.nan_to_num(np.stack([estimates - np.asarray(lows, np.float64),
                                 np.asarray(highs, np.float64) - estimates])).clip(0)


def attribute_panel(ax, rows: list[dict], attribute: str, overall: float) -> None:
  """Horizontal bars of accuracy per category (first category on top), CIs as error bars."""
  accuracy = [number(r["accuracy"]) for r in rows]
  y = np.arange(len(rows))
  ax.barh(y, accuracy, color="tab:blue", alpha=0.8, height=0.7,
          xerr=interval_errors(accuracy, [number(r["accuracy_ci_low"]) for r in rows],
                               [number(r["accuracy_ci_high"]) for r in rows]),
          error_kw={"capsize": 3, "lw": 1})
  ax.set_yticks(y)
  ax.set_yticklabels([f"{r['category']} (n={r['support']})" for r in rows], fontsize=9)
  ax.invert_yaxis()
  if not math.isnan(overall):
    ax.axvline(overall, color="grey", ls="--", lw=1)
  ax.set_xlim(0, 1.02)
  ax.set_title(f"by {attribute}", fontsize=10, loc="left")
  ax.tick_params(axis="x", labelsize=8)


def accuracy_bars(slices: list[dict], family: str, model: str, overall: float,
                  path: str, interval: str = "bootstrap") -> str | None:
  """One panel per attribute, panel heights proportional to the number of categories;
  `interval` names the CIs (interval_name)."""
  rows = [r for r in slices if r.get("family") == family and r["model"] == model]
  attributes = list(dict.fromkeys(r["attribute"] for r in rows))
  if not attributes:
    return None
  sizes = [sum(r["attribute"] == a for r in rows) for a in attributes]
  fig, axes = plt.subplots(len(attributes), 1, figsize=(8, 1.2 + 0.34 * sum(sizes)
                                                       + 0.5 * len(attributes)),
                           gridspec_kw={"height_ratios": sizes}, squeeze=False)
  for ax, attribute in zip(axes[:, 0], attributes):
    attribute_panel(ax, [r for r in rows if r["attribute"] == attribute], attribute, overall)
  axes[-1, 0].set_xlabel(f"accuracy with {interval} CI (dashed: all examples)", fontsize=9)
  fig.suptitle(f"{model} ({family}): accuracy by subgroup", fontsize=11)
  fig.tight_layout()
  return save_figure(fig, path)


def forest_plot(headline: list[dict], family: dict, path: str,
                interval: str = "bootstrap") -> str | None:
  """Models down, one panel per headline metric: estimate with its CI (named by `interval`,
  interval_name)."""
  rows = [r for r in headline if r["family"] == family["name"]]
  models = list(dict.fromkeys(r["model"] for r in rows))
  metrics = [m for m in METRIC_LABELS if any(r["metric"] == m for r in rows)]
  if not models or not metrics:
    return None
  kinds = family.get("kinds", {})
  colours = [KIND_COLOURS.get(kinds.get(m, ""), OTHER_COLOUR) for m in models]
  fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 1.5,
                                                     max(2.5, 1.2 + 0.32 * len(models))),
                           sharey=True, squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    picked = {r["model"]: r for r in rows if r["metric"] == metric}
    values = [number(picked.get(m, {}).get("estimate")) for m in models]
    errors = interval_errors(values, [number(picked.get(m, {}).get("ci_low")) for m in models],
                             [number(picked.get(m, {}).get("ci_high")) for m in models])
    for i, colour in enumerate(colours):
      ax.errorbar(values[i], i, xerr=errors[:, i:i + 1], fmt="o", color=colour, capsize=3,
                  ms=5)
    ax.set_title(METRIC_LABELS[metric], fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(labelsize=8)
  axes[0, 0].set_yticks(np.arange(len(models)))
  axes[0, 0].set_yticklabels(models, fontsize=9)
  axes[0, 0].invert_yaxis()
  fig.suptitle(f"{family['name']}: {family.get('num_examples', '?')} examples, {interval} "
               f"CIs (blue: fusion models)", fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


def fairness_figures(workdir: str) -> list[str]:
  """All fairness figures of a workdir analysed by --mode=fairness (none when not analysed),
  after clearing those of an earlier analysis."""
  out_dir = os.path.join(workdir, "figures", "fairness")
  clear_figures(out_dir, FAIRNESS_FIGURES)
  path = os.path.join(workdir, "analysis", "fairness", "fairness.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    result = json.load(f)
  interval = interval_name(result)
  paths = []
  for pick in result.get("headline_models", []):
    overall = next((number(r["estimate"]) for r in result["headline_ci"]
                    if r["family"] == pick["family"] and r["model"] == pick["model"]
                    and r["metric"] == "accuracy"), math.nan)
    name = f"accuracy_{file_part(pick['family'])}_{file_part(pick['model'])}.png"
    paths.append(accuracy_bars(result["slices"], pick["family"], pick["model"], overall,
                               os.path.join(out_dir, name), interval))
  for family in result.get("families", []):
    paths.append(forest_plot(result["headline_ci"], family,
                             os.path.join(out_dir, f"headline_ci_{file_part(family['name'])}.png"),
                             interval))
  return [p for p in paths if p]
