"""SHAP figures from a shap directory (`jaxmm.saliency.shap_runner` output, `analysis/shap/`).

  field_summary    beeswarm of the metadata field values over the explained examples (each
                   example's predicted class; paper 000's fig. 16)
  field_bar        mean |SHAP value| per field
  field_waterfall  one example's fields from the base value to its probability (figs. 17-19)
  token_figure     a report's tokens coloured by their value, one row per top-k label (paper
                   001's figs. 9-11), a PNG instead of shap.plots.text's HTML
Every figure is written atomically as PNG; `shap_figures` makes all that apply, after
removing the figures of these names that earlier inputs left in its folder (its subfolders,
other SHAP directories' figures, are kept).
"""
import json
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import shap  # noqa: E402

from jaxmm.report.saliency_figures import SIGNED_CMAP, clear_figures, save_figure  # noqa: E402

FIELDS_FILE = "fields.npz"
TOKENS_FILE = "tokens.json"
# The names `shap_figures` draws into its folder.
SHAP_FIGURES = ("fields_summary.png", "fields_bar.png", "fields_waterfall_*.png", "tokens_*.png")


def explained_columns(fields: dict) -> tuple[np.ndarray, int]:
  """([N] output column drawn for each example, how many rows fell back): the `predicted`
  entry, the column of the example's predicted class (values [N, F, C]). A row whose entry is
  no column (files written before baselines mapped classes to columns, where a class absent
  from train had none) gets the column with the highest explained output
  (base + sum of values): the nearest class that has SHAP values."""
  values = np.asarray(fields["values"])
  predicted = np.asarray(fields["predicted"], np.int64)
  undefined = (predicted < 0) | (predicted >= values.shape[2])
  if undefined.any():
    outputs = np.asarray(fields["base_values"]) + values.sum(1)
    predicted = np.where(undefined, outputs.argmax(1), predicted)
  return predicted, int(undefined.sum())


def predicted_class_explanation(fields: dict) -> shap.Explanation:
  """fields.npz arrays -> a 2-D Explanation [N, F]: each example's values for its predicted
  class (explained_columns), with the field codes as data and readable display data."""
  n = len(fields["values"])
  rows = np.arange(n)
  predicted = explained_columns(fields)[0]
  return shap.Explanation(
      values=np.asarray(fields["values"])[rows, :, predicted],
      base_values=np.asarray(fields["base_values"])[rows, predicted],
      data=np.asarray(fields["data"], np.float64),
      display_data=np.asarray(fields["display_data"]) if "display_data" in fields else None,
      feature_names=[str(f) for f in fields["field_names"]])


def field_summary(explanation: shap.Explanation, path: str, title: str = "") -> str:
  """shap's beeswarm (summary) plot: one dot per example and field, coloured by the field's
  code (age in years; a category's index, so the colour order of categories is arbitrary)."""
  shap.plots.beeswarm(explanation, show=False, color_bar_label="field value (code)")
  fig = plt.gcf()
  fig.axes[0].set_title(title, fontsize=9)
  return save_figure(fig, path)


def field_bar(explanation: shap.Explanation, path: str, title: str = "") -> str:
  """Mean |SHAP value| of each field over the examples."""
  fig, ax = plt.subplots(figsize=(5.5, 0.5 * explanation.shape[1] + 1.2))
  shap.plots.bar(explanation.abs.mean(0), show=False, ax=ax)
  ax.set_title(title, fontsize=9)
  return save_figure(fig, path)


def field_waterfall(explanation: shap.Explanation, i: int, path: str, title: str = "") -> str:
  """One example's waterfall: base value + each field's value = the explained output."""
  if not 0 <= i < explanation.shape[0]:
    raise IndexError(f"waterfall example {i} is not among the {explanation.shape[0]} "
                     f"explained examples")
  shap.plots.waterfall(explanation[i], show=False)
  fig = plt.gcf()
  fig.axes[0].set_title(title, fontsize=9)
  return save_figure(fig, path)


def token_lines(tokens: Sequence[str], line_chars: int) -> list[list[tuple[int, int]]]:
  """Flows tokens into lines of at most `line_chars` characters (a token longer than a line
  gets its own): per line, (token index, starting character column) pairs."""
  lines, column = [[]], 0
  for i, token in enumerate(tokens):
    width = len(token) + 2
    if column and column + width > line_chars:
      lines.append([])
      column = 0
    lines[-1].append((i, column))
    column += width
  return lines


def token_figure(tokens: Sequence[str], values: np.ndarray, label_names: Sequence[str],
                 scores: Sequence[float], path: str, title: str = "",
                 line_chars: int = 140) -> str:
  """A report's tokens as boxes coloured by value / max |value| over its panels (blue -,
  red +), flowed like text, one panel per label. values [k, T]."""
  values = np.asarray(values, np.float64).reshape(len(label_names), len(tokens))
  scale = max(float(np.abs(values).max()) if values.size else 0.0, 1e-12)
  lines = token_lines(tokens, line_chars)
  cmap = plt.get_cmap(SIGNED_CMAP)
  fig, axes = plt.subplots(len(label_names), 1, squeeze=False,
                           figsize=(13, len(label_names) * (0.3 * len(lines) + 0.55) + 0.3))
  for ax, name, score, row in zip(axes[:, 0], label_names, scores, values):
    for r, line in enumerate(lines):
      for i, column in line:
        v = row[i]
        ax.text(column / line_chars, 1 - (r + 0.5) / len(lines), tokens[i], fontsize=9,
                family="monospace", ha="left", va="center",
                color="white" if abs(v) > 0.6 * scale else "black",
                bbox=dict(facecolor=cmap(0.5 + 0.5 * v / scale), edgecolor="none", pad=1.5))
    ax.set_title(f"{name} (p={score:.2f}, sum of token values {row.sum():+.3f})", fontsize=9,
                 loc="left")
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=9)
  return save_figure(fig, path)


def field_figures(fields: dict, out_dir: str, example: int = 0, title_prefix: str = "") -> list[str]:
  """Summary, bar and waterfall figures of fields.npz's arrays."""
  explanation = predicted_class_explanation(fields)
  columns, fallbacks = explained_columns(fields)
  classes = [str(c) for c in fields["class_names"]]
  n = explanation.shape[0]
  i = min(example, n - 1)
  pred = classes[int(columns[i])]
  example_id = str(fields["id"][i]) if "id" in fields else str(i)
  units = str(fields["output"]) if "output" in fields else "probability"
  what = f"{title_prefix}predicted-class {units}".replace("_", "-")
  if fallbacks:
    what += f" ({fallbacks} with no SHAP column for it: highest explained class)"
  return [
      field_summary(explanation, os.path.join(out_dir, "fields_summary.png"),
                    f"metadata field SHAP, {what}, {n} examples"),
      field_bar(explanation, os.path.join(out_dir, "fields_bar.png"),
                f"mean |SHAP| of the {what}, {n} examples"),
      field_waterfall(explanation, i, os.path.join(out_dir, f"fields_waterfall_{i}.png"),
                      f"{title_prefix}example {example_id}: {units.replace('_', '-')} of {pred}"),
  ]


def token_figures(document: dict, out_dir: str, max_examples: int = 4) -> list[str]:
  """One token figure for each of the first `max_examples` examples of tokens.json."""
  written = []
  for record in document["examples"][:max_examples]:
    written.append(token_figure(
        record["tokens"], np.asarray(record["values"]), record["label_names"],
        record["scores"], os.path.join(out_dir, f"tokens_{record['index']}.png"),
        f"example {record.get('id', record['index'])}: token SHAP of the top-"
        f"{len(record['labels'])} label probabilities"))
  return written


def shap_figures(shap_dir: str, out_dir: str, example: int = 0,
                 max_token_examples: int = 4, title_prefix: str = "") -> list[str]:
  """Every figure that applies to the shap directory's files; returns the written paths."""
  clear_figures(out_dir, SHAP_FIGURES)
  written = []
  fields_path = os.path.join(shap_dir, FIELDS_FILE)
  if os.path.exists(fields_path):
    with np.load(fields_path) as data:
      written += field_figures({k: data[k] for k in data.files}, out_dir, example, title_prefix)
  tokens_path = os.path.join(shap_dir, TOKENS_FILE)
  if os.path.exists(tokens_path):
    with open(tokens_path) as f:
      written += token_figures(json.load(f), out_dir, max_token_examples)
  return written
