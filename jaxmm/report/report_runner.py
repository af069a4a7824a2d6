"""`--mode=report`: one self-contained `<workdir>/report.html` made from the files there.

The workdir is a run dir (one trained model: config.json, results.json, metrics.jsonl, ...)
or a pipeline dir (comparison.json and one run dir per variant, jaxmm.workflow). The training
figures (jaxmm.report.run_figures) are drawn first; then every section whose files exist is
written, in this order: run summary, configuration, dataset, results, training curves,
confusion matrices, ROC / PR curves, model comparison, baselines, SHAP, fairness, saliency,
explanation evaluation, other figures, reproducibility. A pipeline page has its
pipeline-level sections first, then each variant's sections under its own heading.

Every image is a base64 data URI and the CSS is inline, so the page opens offline and can be
mailed as one file; every CSV is rendered with csv.DictReader and every PNG of a
figures/<section>/ folder is embedded (each figure writer clears the figures it owns before
drawing, so these are the figures of the current results; of figures/shap/'s baselines
folders, only those of models baselines.json lists).

An analysis section made from a checkpoint (baselines, SHAP, saliency, explanation evaluation)
says which step its files record, with a warning, also in the summary, when that is not the
best checkpoint of results.json that the Results section shows.
"""
import csv
import dataclasses
import datetime
import glob
import json
import math
import os
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np

from jaxmm.data.atomic import write_text_atomic
from jaxmm.report import fairness_figures, html, run_figures
from jaxmm.report.run_figures import optional_json
from jaxmm.train import distributed

REPORT_NAME = "report.html"
RUN_FILES = ("config.json", "env_info.json", "requirements.lock")
# The figures/<folder>/s that a section of their topic shows (training: training_parts,
# evaluation: the explanation evaluation); any other folder gets a section of its own.
FIGURE_FOLDERS_SHOWN = ("training", "comparison", "baselines", "shap", "fairness", "saliency",
                        "evaluation")
TRAINING_FIGURES = (("confusion", "confusion_matrix"), ("roc-pr", "roc_pr"))
FAIRNESS_ORDER = ("headline_ci.csv", "slices.csv", "ztests.csv", "paired_tests.csv")
FAIRNESS_TITLES = {
    "headline_ci.csv": "Headline metrics with {interval} intervals",  # fairness_titles
    "slices.csv": "Subgroup slices (tables 6-8 of paper 000)",
    "ztests.csv": "Two-proportion z-tests between subgroups",
    "paired_tests.csv": "Paired tests between models: McNemar, Friedman (table 9 of paper 000)",
    "explanation_slices.csv": "Explanation metrics per subgroup",
    "explanation_tests.csv": "Explanation metrics: tests between subgroups",
}
BASELINE_TITLES = {"table.csv": "Models (tables 4 and 5 of paper 000)",
                   "deltas.csv": "Fusion vs unimodal (table 15 of paper 000)"}
ROI_TABLES = (("summary.csv", "ROI agreement per group"),
              ("group_tests.csv", "Tests between groups"))
METRIC_ORDER = ("accuracy", "masked_accuracy", "macro_precision", "macro_recall", "macro_f1",
                "roc_auc", "pr_auc", "precision", "recall", "f1", "loss")
# The packages env_info.json records, shown in the reproducibility section.
KEY_VERSIONS = ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn", "grain")
# The sections made from a checkpoint: (title, the --mode that recomputes them).
ANALYSIS_SECTIONS = {"baselines": ("Baselines", "baselines"), "shap": ("SHAP", "shap"),
                     "saliency": ("Saliency", "saliency"),
                     "explanations": ("Explanation evaluation", "evaluate_explanations")}
# workflow.run_baselines draws the SHAP figures of a baseline model into
# figures/shap/baselines_<task>_<model>/.
BASELINES_SHAP_PREFIX = "baselines_"


@dataclasses.dataclass
class Part:
  """One section: `key` (its id on a run page), title, body HTML ('' = absent)."""
  key: str
  title: str
  body: str


# ------------------------------------------------------------------ reading

def read_rows(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def relative(path: str, base: str) -> str:
  return os.path.relpath(path, base).replace(os.sep, "/")


def is_pipeline(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "comparison.json"))


def variant_dirs(workdir: str) -> list[tuple[str, str]]:
  """(name, run dir) of each variant comparison.json names whose run dir exists."""
  rows = optional_json(os.path.join(workdir, "comparison.json"), {}).get("rows", [])
  names = [str(r["model"]) for r in rows if "model" in r]
  return [(n, os.path.join(workdir, n)) for n in names if os.path.isdir(os.path.join(workdir, n))]


# ------------------------------------------------------------------ generic blocks

def csv_block(path: str, title: str, base: str, collapsed: bool = False) -> str:
  """The CSV at `path` as a table titled `title` (with its relative path)."""
  rows = read_rows(path)
  if not rows:
    return ""
  caption = f"{title} ({relative(path, base)})"
  block = html.table(rows, caption=caption)
  return html.details(caption, block) if collapsed else block


def csv_blocks(paths: Iterable[str], titles: dict, base: str) -> str:
  return "".join(csv_block(p, titles.get(os.path.basename(p), os.path.basename(p)), base)
                 for p in paths)


def figures_block(paths: Iterable[str], base: str) -> str:
  """Each PNG embedded, captioned with its path relative to the workdir."""
  blocks = []
  for path in paths:
    with open(path, "rb") as f:
      png = f.read()
    if png.startswith(html.PNG_SIGNATURE):  # a file being rewritten is skipped, not fatal
      blocks.append(html.image_figure(png, relative(path, base)))
  return "".join(blocks)


def pngs(folder: str, pattern: str = "*.png") -> list[str]:
  return sorted(glob.glob(os.path.join(folder, "**", pattern), recursive=True))


def scalar_leaves(value, prefix: str = "") -> list[tuple[str, object]]:
  """The (dotted key, value) of every number / string / bool in a JSON tree."""
  if isinstance(value, dict):
    return [leaf for k, v in value.items()
            for leaf in scalar_leaves(v, f"{prefix}.{k}" if prefix else str(k))]
  if isinstance(value, list):  # short lists of numbers or names, as one value
    short = len(value) <= 8 and not any(isinstance(v, (dict, list)) for v in value)
    return [(prefix, json.dumps(value))] if short else []
  return [(prefix, value)]


# ------------------------------------------------------------------ summary and configuration

def run_label(config: dict) -> str:
  """'synthetic_derm, image+meta, concat fusion' from a config dict."""
  data, model = config.get("data", {}), config.get("model", {})
  modalities = "+".join(model.get("modalities", ()))
  fusion = f", {model.get('fusion')} fusion" if len(model.get("modalities", ())) > 1 else ""
  return f"{data.get('name', '?')}, {modalities or '?'}{fusion}"


def devices_text(env: dict) -> str:
  devices = env.get("devices") or []
  return (f"{env.get('backend', '?')}: {len(devices)} local device(s) ({', '.join(devices)}), "
          f"{env.get('process_count', 1)} process(es)")


def summary_body(workdir: str, config: dict, runs: Sequence[tuple[str, str]],
                 pipeline: bool) -> str:
  """Workdir, date, config, seed, devices and package versions (first run's env_info)."""
  env = next((optional_json(os.path.join(d, "env_info.json")) for _, d in runs
              if os.path.exists(os.path.join(d, "env_info.json"))), None) or {}
  pairs = [("workdir", os.path.abspath(workdir)),
           ("generated", datetime.datetime.now(datetime.UTC)
            .strftime("%Y-%m-%d %H:%M UTC")),
           ("config", run_label(config) if not pipeline else
            f"{config.get('data', {}).get('name', '?')} pipeline"),
           ("seed", env.get("seed", config.get("seed")))]
  if pipeline:
    pairs.append(("variants", ", ".join(name for name, _ in runs)))
  if env:
    versions = env.get("packages", {})
    pairs += [("devices", devices_text(env)),
              ("versions", ", ".join(f"{k} {versions[k]}" for k in ("jax", "flax")
                                     if versions.get(k)))]
  return html.key_value_table(pairs)


def configuration_body(config_json: str | None, title: str) -> str:
  """The resolved config as collapsed, preformatted JSON."""
  if not config_json:
    return ""
  return html.details(title, html.preformatted(config_json))


def config_text(config) -> str | None:
  """An ml_collections config (or dict) as indented JSON."""
  if config is None:
    return None
  if hasattr(config, "to_json_best_effort"):
    return config.to_json_best_effort(indent=2, sort_keys=True)
  return json.dumps(config, indent=2, sort_keys=True, default=str)


def config_dict(config) -> dict:
  text = config_text(config)
  return json.loads(text) if text else {}


# ------------------------------------------------------------------ dataset and results

def task_rows(task: dict, config: dict, modalities: str) -> list[tuple[str, object]]:
  """Task kind, classes, label, modalities and the shapes of each input."""
  kind = "multilabel" if task.get("multilabel") else (
      "binary" if task.get("num_classes") == 2 else "multiclass")
  data = config.get("data", {})
  pairs = [("dataset", data.get("name")),
           ("task", f"{kind}, {task.get('num_classes', '?')} classes"),
           ("classes", ", ".join(map(str, task.get("class_names", [])))),
           ("label", data.get("label_key")),
           ("modalities", modalities)]
  if task.get("image_shape"):
    pairs.append(("image shape", " x ".join(map(str, task["image_shape"]))))
  if task.get("meta_dim"):
    fields = ", ".join(data.get("meta_fields", ()))
    pairs.append(("metadata", f"{fields} ({task['meta_dim']} encoded columns)"))
  if task.get("vocab_size"):
    pairs.append(("text", f"{data.get('text_key', '')} (vocabulary {task['vocab_size']})"))
  return [(k, v) for k, v in pairs if v not in (None, "")]


def class_count_rows(labels, class_names: Sequence[str], multilabel: bool) -> list[dict]:
  """Test split class counts: count and share per class, or per label its positive,
  negative, uncertain (-1) and missing (-2) entries."""
  labels = np.asarray(labels)
  name = lambda k: str(class_names[k]) if k < len(class_names) else str(k)
  if multilabel:
    return [{"label": name(k), **{kind: int(np.sum(labels[:, k] == v)) for kind, v in
                                  (("positive", 1), ("negative", 0), ("uncertain", -1),
                                   ("missing", -2))}} for k in range(labels.shape[1])]
  counts = np.bincount(labels.astype(np.int64), minlength=len(class_names))
  return [{"class": name(k), "count": int(c), "share": float(c / max(counts.sum(), 1))}
          for k, c in enumerate(counts)]


def modalities_of(run_dir: str) -> tuple:
  return tuple(optional_json(os.path.join(run_dir, "config.json"), {})
               .get("model", {}).get("modalities", ()))


def dataset_body(run_dir: str, modalities: str | None = None) -> str:
  """Task info (results.json), split sizes and the test split's class counts
  (predictions/test.npz). `modalities`: shown instead of the run's own (a pipeline's)."""
  results = optional_json(os.path.join(run_dir, "results.json"), {})
  task = results.get("task")
  if not task:
    return ""
  config = optional_json(os.path.join(run_dir, "config.json"), {})
  body = html.key_value_table(task_rows(task, config,
                                        modalities or "+".join(modalities_of(run_dir))))
  sizes = task.get("split_sizes", {})
  if sizes:
    body += html.table([{"split": k, "examples": v} for k, v in sizes.items()],
                       caption="Split sizes")
  predictions = os.path.join(run_dir, "predictions", "test.npz")
  if os.path.exists(predictions):
    with np.load(predictions) as data:
      labels = data["label"]
    body += html.table(class_count_rows(labels, task.get("class_names", []),
                                        bool(task.get("multilabel"))),
                       caption="Class counts of the test split (predictions/test.npz)")
  return body


def metric_rank(name: str) -> int:
  """Table 4's column order first, then the rest (loss, counts)."""
  return METRIC_ORDER.index(name) if name in METRIC_ORDER else len(METRIC_ORDER)


def split_metrics(results: dict) -> dict:
  """{split: metrics} of the results.json entries that are evaluated splits."""
  return {k: v for k, v in results.items() if isinstance(v, dict) and "num_examples" in v}


def headline_values(metrics: dict) -> dict:
  """The scalar entries of one split's results.json record, a null (how results.json writes
  NaN) as NaN: html shows it as '-', an undefined metric, not as a blank or a lost column."""
  return {k: math.nan if v is None else v for k, v in metrics.items()
          if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def results_table(splits: dict) -> tuple[list[dict], list[str]]:
  """(rows, columns) of the headline metrics: a row per split, the columns of every split in
  metric_rank order (a metric one split lacks keeps its place; its cell is blank)."""
  rows = [{"split": name, **headline_values(m)} for name, m in splits.items()]
  keys = dict.fromkeys(k for row in rows for k in row if k != "split")
  return rows, ["split", *sorted(keys, key=metric_rank)]


def run_results_body(run_dir: str) -> str:
  """Headline metrics per split, the test split's per-class report, the best step."""
  results = optional_json(os.path.join(run_dir, "results.json"), {})
  splits = split_metrics(results)
  if not splits:
    return ""
  rows, columns = results_table(splits)
  stopped = " (early stopped)" if results.get("early_stopped") else ""
  body = html.paragraph(f"Best checkpoint: step {html.text(results.get('best_step'))} of "
                        f"{html.text(results.get('final_step'))}{stopped}; metrics of that "
                        "checkpoint.")
  body += html.table(rows, columns, caption="Metrics of the best checkpoint")
  for split in ("test", "validation"):
    per_class = splits.get(split, {}).get("per_class") or splits.get(split, {}).get("per_label")
    if per_class:
      names = [str(n) for n in results.get("task", {}).get("class_names", [])]
      order = sorted(per_class, key=lambda n: names.index(n) if n in names else len(names))
      table = html.table([{"class": k, **dict(sorted(per_class[k].items(),
                                                       key=lambda i: metric_rank(i[0])))}
                          for k in order], caption=f"Per-class report, {split} split")
      body += table if split == "test" else html.details(f"Per-class report, {split} split",
                                                          table)
  return body


def margin_rows(margins: dict) -> list[dict]:
  """{model: {vs_<unimodal>: margin}} -> one row per fusion model, a column per unimodal."""
  return [{"model": model, **{f"over {k.removeprefix('vs_')}": v for k, v in deltas.items()}}
          for model, deltas in margins.items()]


def pipeline_results_body(workdir: str) -> str:
  """comparison.csv and the fusion margins of comparison.json."""
  body = ""
  if os.path.exists(os.path.join(workdir, "comparison.csv")):
    body += csv_block(os.path.join(workdir, "comparison.csv"),
                      "Test-split comparison (table 4 of paper 000)", workdir)
  margins = optional_json(os.path.join(workdir, "comparison.json"), {}).get("fusion_margins")
  if margins:
    body += html.table(margin_rows(margins),
                       caption="Fusion margins: the fusion model's headline metric minus each "
                               "unimodal model's (comparison.json)")
  return body


# ------------------------------------------------------------------ figures and tables by topic

def training_parts(run_dir: str, base: str) -> list[Part]:
  """Training curves, confusion matrices and ROC / PR curves from figures/training/."""
  paths = pngs(os.path.join(run_dir, run_figures.TRAINING_DIR))
  picked = {key: [p for p in paths if os.path.basename(p).startswith(prefix)]
            for key, prefix in TRAINING_FIGURES}
  rest = [p for p in paths if not any(p in v for v in picked.values())]
  return [Part("training", "Training curves", figures_block(rest, base)),
          Part("confusion", "Confusion matrices", figures_block(picked["confusion"], base)),
          Part("roc-pr", "ROC and precision-recall curves", figures_block(picked["roc-pr"], base))]


def baselines_task_dirs(root: str) -> list[str]:
  """The task folders under baselines/ of the tasks baselines.json holds (every folder when it
  names none), so a task of an earlier baselines run is not shown."""
  dirs = sorted(d for d in glob.glob(os.path.join(root, "baselines", "*")) if os.path.isdir(d))
  tasks = optional_json(os.path.join(root, "baselines", "baselines.json"), {}).get("tasks")
  return dirs if tasks is None else [d for d in dirs if os.path.basename(d) in tasks]


def baselines_body(root: str, base: str) -> str:
  """Per task under baselines/: table.csv, deltas.csv, then its other CSVs; baselines.json;
  the figures of figures/baselines/ (comparison bars, confusion, ROC/PR, PCA, t-SNE)."""
  body = ""
  for task_dir in baselines_task_dirs(root):
    tables = sorted(glob.glob(os.path.join(task_dir, "*.csv")),
                    key=lambda p: (os.path.basename(p) not in BASELINE_TITLES,
                                   list(BASELINE_TITLES).index(os.path.basename(p))
                                   if os.path.basename(p) in BASELINE_TITLES else 0, p))
    blocks = csv_blocks(tables, BASELINE_TITLES, base)
    if blocks:
      body += f"<h4>task {html.text(os.path.basename(task_dir))}</h4>{blocks}"
  summary = optional_json(os.path.join(root, "baselines", "baselines.json"), {})
  if summary:
    body += html.key_value_table(baselines_summary_pairs(summary),
                                 caption="Baselines run (baselines/baselines.json)")
  return body + figures_block(pngs(os.path.join(root, "figures", "baselines")), base)


def baselines_summary_pairs(summary: dict) -> list[tuple[str, object]]:
  """The checkpoint, the feature sets and the skipped tasks (with why) of baselines.json."""
  pairs = [("checkpoint step", summary.get("checkpoint_step")),
           ("feature sets", ", ".join(map(str, summary.get("feature_sets", [])))),
           ("seconds", summary.get("seconds"))]
  pairs += [(f"task {task} skipped", why) for task, why in
            (summary.get("skipped_tasks") or {}).items()]
  return [(k, v) for k, v in pairs if v not in (None, "")]


def baselines_shap_folders(root: str) -> set[str]:
  """The figures/shap/ folder names of the baseline models' SHAP that baselines.json lists."""
  tasks = optional_json(os.path.join(root, "baselines", "baselines.json"), {}).get("tasks", {})
  return {f"{BASELINES_SHAP_PREFIX}{task}_{model}" for task, summary in tasks.items()
          for model in (summary.get("shap") or {})}


def shown_shap_figures(root: str) -> list[str]:
  """The PNGs of figures/shap/, less its baselines_<task>_<model>/ folders of models that
  baselines.json no longer lists (an earlier baselines run's)."""
  folder = os.path.join(root, "figures", "shap")
  current = baselines_shap_folders(root)
  parts = lambda path: relative(path, folder).split("/")
  return [p for p in pngs(folder) if len(parts(p)) == 1 or
          not parts(p)[0].startswith(BASELINES_SHAP_PREFIX) or parts(p)[0] in current]


def shap_body(root: str, base: str) -> str:
  folder = os.path.join(root, "analysis", "shap")
  tables = sorted(glob.glob(os.path.join(folder, "**", "*.csv"), recursive=True))
  body = "".join(csv_block(p, os.path.basename(p), base, collapsed=True) for p in tables)
  return body + figures_block(pngs(folder) + shown_shap_figures(root), base)


def fairness_titles(folder: str) -> dict:
  """FAIRNESS_TITLES, the headline intervals named with the level that the analysis's
  fairness.json (in `folder`) records: config.fairness.confidence may not be 0.95."""
  interval = fairness_figures.interval_name(
      optional_json(os.path.join(folder, "fairness.json"), {}))
  return {name: title.format(interval=interval) for name, title in FAIRNESS_TITLES.items()}


def fairness_body(root: str, base: str) -> str:
  """The fairness tables (headline CIs, slices, z-tests, paired tests first) and figures."""
  folder = os.path.join(root, "analysis", "fairness")
  tables = sorted(glob.glob(os.path.join(folder, "*.csv")),
                  key=lambda p: (FAIRNESS_ORDER.index(os.path.basename(p))
                                 if os.path.basename(p) in FAIRNESS_ORDER else
                                 len(FAIRNESS_ORDER), p))
  body = csv_blocks(tables, fairness_titles(folder), base)
  return body + figures_block(pngs(os.path.join(root, "figures", "fairness")), base)


def with_interval(record: dict, key: str):
  """'0.364 [0.314, 0.414]' when record has key_ci, else the value."""
  interval = record.get(f"{key}_ci")
  value = record.get(key)
  if isinstance(interval, list) and len(interval) == 2 and isinstance(value, (int, float)):
    low, high = (html.format_number(v) if isinstance(v, (int, float)) else "-" for v in interval)
    return f"{html.format_number(value)} [{low}, {high}]"
  return value


def explanation_rows(summary: dict) -> list[dict]:
  """One row per method (values with their 95% CI), and the random pixel order's AUCs."""
  rows = [{k: with_interval(m, k) for k in m if not k.endswith("_ci")}
          for m in summary.get("methods", [])]
  if summary.get("random_order"):
    rows.append({"method": "random order", **summary["random_order"]})
  return rows


def ifa_rows(ifa: dict) -> list[dict]:
  return [{"method": method, **dict(scalar_leaves(values))} for method, values in ifa.items()]


def confounder_block(finding: dict) -> str:
  """The confounder finding: the affected class, the artefact's rate per class, the maps'
  agreement and mass on the artefact per method, the feature-level finding."""
  if not finding:
    return ""
  body = html.paragraph(f"Affected class: <strong>{html.text(finding.get('affected_class'))}"
                        f"</strong> (alpha {html.text(finding.get('alpha'))}).")
  rates = finding.get("rates") or {}
  if rates:
    rows = [{"class": k, "share with the artefact": v} for k, v in rates.items()]
    if "other_rate" in finding:
      rows.append({"class": f"all but {finding['affected_class']}",
                   "share with the artefact": finding["other_rate"]})
    body += html.table(rows, caption="Share of each class's images with the artefact")
  if finding.get("methods"):
    body += html.table(finding["methods"], caption="Maps on images with / without the "
                                                   "artefact; mass on the artefact vs control")
  if finding.get("features"):
    body += html.key_value_table(scalar_leaves(finding["features"]),
                                 caption="Confounder features of the importance matrix")
  return body


def explanations_body(root: str, base: str) -> str:
  """explanation_evaluation.json's headline table, the ROI agreement tables and figures, the
  other evaluation figures, and the confounder finding."""
  analysis = os.path.join(root, "analysis")
  summary = optional_json(os.path.join(analysis, "explanation_evaluation.json"), {})
  body = ""
  if summary.get("methods"):
    step = (f", checkpoint step {summary['checkpoint_step']}"
            if summary.get("checkpoint_step") is not None else "")
    body += html.table(explanation_rows(summary), caption=(
        f"Explanation evaluation, {summary.get('split', '?')} split, "
        f"{summary.get('num_examples', '?')} examples{step} (95% bootstrap CIs in brackets)"))
  if summary.get("ifa"):
    body += html.details("Integrated feature analysis per method",
                         html.table(ifa_rows(summary["ifa"])))
  for name, title in ROI_TABLES:
    path = os.path.join(analysis, "roi_agreement", name)
    if os.path.exists(path):
      body += csv_block(path, title, base, collapsed=True)
  figures = pngs(os.path.join(root, "figures", "evaluation"))
  roi = [p for p in figures if os.path.basename(p).startswith(("roi_agreement", "gallery"))]
  confounder = [p for p in figures if os.path.basename(p).startswith("confounder")]
  body += figures_block(roi + [p for p in figures if p not in roi + confounder], base)
  finding = optional_json(os.path.join(analysis, "confounder.json")) or summary.get("confounder")
  if finding or confounder:
    body += "<h4>Confounder finding</h4>" + confounder_block(finding or {})
    body += figures_block(confounder, base)
  return body


def other_figure_parts(root: str, base: str) -> list[Part]:
  """A section per figures/<folder>/ that no other section shows."""
  folders = sorted(d for d in glob.glob(os.path.join(root, "figures", "*"))
                   if os.path.isdir(d) and os.path.basename(d) not in FIGURE_FOLDERS_SHOWN)
  return [Part(html.anchor_id("figures", os.path.basename(d)),
               f"Figures: {os.path.basename(d)}", figures_block(pngs(d), base))
          for d in folders]


def topic_parts(root: str, base: str) -> list[Part]:
  """The sections that exist at both levels (a run dir, or a pipeline dir itself); an
  analysis section starts with the checkpoint step of its files."""
  steps, best = analysis_steps(root, base), best_step(root)
  noted = lambda key, body: step_notes(steps[key], best, key) + body if body else ""
  return ([Part("comparison", "Model comparison",
                figures_block(pngs(os.path.join(root, run_figures.COMPARISON_DIR)), base)),
           Part("baselines", "Baselines", noted("baselines", baselines_body(root, base))),
           Part("shap", "SHAP", noted("shap", shap_body(root, base))),
           Part("fairness", "Fairness and statistics", fairness_body(root, base)),
           Part("saliency", "Saliency", noted("saliency", figures_block(
               pngs(os.path.join(root, "figures", "saliency")), base))),
           Part("explanations", "Explanation evaluation",
                noted("explanations", explanations_body(root, base)))]
          + other_figure_parts(root, base))


# ------------------------------------------------------------------ checkpoint steps

def best_step(run_dir: str) -> int | None:
  """The best checkpoint's step of results.json (what the Results section shows)."""
  return optional_json(os.path.join(run_dir, "results.json"), {}).get("best_step")


def recorded_step(path: str) -> int | None:
  """The `checkpoint_step` a JSON or .npz analysis file records; None when it records none
  or cannot be read (absent, half written)."""
  try:
    if path.endswith(".npz"):
      with np.load(path) as data:
        value = data["checkpoint_step"].item() if "checkpoint_step" in data.files else None
    else:
      record = optional_json(path, {})
      value = record.get("checkpoint_step") if isinstance(record, dict) else None
  except (OSError, ValueError, zipfile.BadZipFile):
    return None
  return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
      else None


def analysis_files(root: str) -> dict[str, list[str]]:
  """{section key: the files under `root` whose checkpoint_step its content comes from}: the
  evaluation's saliency maps count for the explanation evaluation, the other saliency
  directories for the saliency section, baselines.json also for its models' SHAP figures."""
  analysis = os.path.join(root, "analysis")
  evaluation = os.path.join(analysis, "explanation_evaluation.json")
  maps = optional_json(evaluation, {}).get("saliency_directory")
  maps = os.path.normpath(os.path.join(root, maps)) if maps else None
  saliency = sorted(os.path.normpath(d)
                    for d in glob.glob(os.path.join(analysis, "saliency", "*")))
  baselines = os.path.join(root, "baselines", "baselines.json")
  shap_folders = [os.path.join(root, "figures", "shap", name)
                  for name in sorted(baselines_shap_folders(root))]
  return {"baselines": [baselines],
          "shap": [os.path.join(analysis, "shap", "fields.npz"),
                   os.path.join(analysis, "shap", "tokens.json")] +
                  ([baselines] if any(pngs(folder) for folder in shap_folders) else []),
          "saliency": [os.path.join(d, "manifest.json") for d in saliency if d != maps],
          "explanations": [evaluation] + ([os.path.join(maps, "manifest.json")] if maps else [])}


def analysis_steps(root: str, base: str) -> dict[str, dict[str, int]]:
  """{section key: {file path relative to `base`: its checkpoint step}} of `analysis_files`
  that record one."""
  steps = {}
  for key, paths in analysis_files(root).items():
    found = {relative(p, base): recorded_step(p) for p in paths if os.path.exists(p)}
    steps[key] = {path: step for path, step in found.items() if step is not None}
  return steps


def step_notes(steps: dict[str, int], best: int | None, key: str) -> str:
  """'Checkpoint step 3 (files)' per step the section's files record, and a warning naming
  those that are not the best checkpoint's step `best` (None: no warning)."""
  if not steps:
    return ""
  by_step = {}
  for path, step in steps.items():
    by_step.setdefault(step, []).append(path)
  named = "; ".join(f"checkpoint step {step} ({', '.join(map(html.text, paths))})"
                    for step, paths in sorted(by_step.items()))
  body = html.paragraph(f"Computed from {named}.", "muted")
  stale = sorted(step for step in by_step if best is not None and step != best)
  if stale:
    modes = sorted({rerun_mode(path, key) for step in stale for path in by_step[step]})
    body += html.warning(
        f"computed from checkpoint step {', '.join(map(str, stale))}, not from the best "
        f"checkpoint, step {html.text(best)}, whose metrics the Results section shows "
        f"(results.json): these outputs may predate the latest training. Rerun "
        f"{' and '.join(f'<code>--mode={m}</code>' for m in modes)} to compute them from it.")
  return body


def rerun_mode(path: str, key: str) -> str:
  """The --mode that rewrites an analysis file of section `key` (baselines.json: baselines)."""
  return "baselines" if os.path.basename(path) == "baselines.json" else ANALYSIS_SECTIONS[key][1]


def stale_analyses(run_dir: str) -> list[str]:
  """'SHAP (checkpoint step 3)' per analysis section of a run dir whose files record another
  step than results.json's best step."""
  best = best_step(run_dir)
  if best is None:
    return []
  steps = analysis_steps(run_dir, run_dir)
  return [f"{title} (checkpoint step "
          f"{', '.join(str(s) for s in sorted(set(steps[key].values()) - {best}))})"
          for key, (title, _) in ANALYSIS_SECTIONS.items()
          if set(steps[key].values()) - {best}]


def stale_warning(runs: Sequence[tuple[str, str]], pipeline: bool) -> str:
  """A warning listing, per run, the analysis sections made from another checkpoint than the
  best one; '' when there are none."""
  lines = [(name, stale) for name, run_dir in runs if (stale := stale_analyses(run_dir))]
  if not lines:
    return ""
  items = "; ".join((f"variant {html.text(name)}: " if pipeline else "") +
                    ", ".join(map(html.text, stale)) for name, stale in lines)
  return html.warning(f"analyses made from another checkpoint than the best one, whose "
                      f"metrics the Results section shows: {items}. See each section.")


# ------------------------------------------------------------------ reproducibility

DETERMINISM_NOTES = (
    ("jaxmm draws every random number from the config's <code>seed</code>: one base key, "
     "folded with the step inside a step, and a seeded data order. On CPU a re-run of the same "
     "command with the same package versions gives the same numbers (the test suite checks "
     "that an interrupted and resumed run ends with bit-identical parameters)."),
    ("On GPU this is not so by default: XLA's determinism notes (docs/determinism.md) say "
     "scatter, select-and-scatter, GEMMs, convolutions and attention may run non-"
     "deterministically, and that autotuning may pick different kernels in different "
     "compilations."),
    ("To make GPU runs run-to-run deterministic, start them with "
     "<code>XLA_FLAGS=--xla_gpu_deterministic_ops=true</code> set in the environment before "
     "JAX starts (XLA's flag help: &ldquo;Guarantees run-to-run determinism on GPU&rdquo;). It "
     "selects deterministic, possibly slower, implementations; XLA documents that compilation "
     "fails on an operation without a deterministic implementation (select-and-scatter) under "
     "its narrower <code>--xla_gpu_exclude_nondeterministic_ops</code>; jaxmm's max pool "
     "computes its gradient without select-and-scatter (jaxmm/models/fast_backward.py)."),
    ("Kernel choice is fixed across compilations by persisted autotuning "
     "(<code>--xla_gpu_per_fusion_autotune_cache_dir=DIR</code>, or "
     "<code>--xla_gpu_dump_autotune_results_to=FILE</code> then "
     "<code>--xla_gpu_load_autotune_results_from=FILE</code>); the results are only valid for "
     "the same GPU type and XLA version."),
    ("Determinism holds for the same hardware, driver and package versions: another GPU model "
     "or jaxlib may give different numbers. Each run's env_info.json records its XLA_FLAGS "
     "(column above)."),
)


def reproducibility_body(workdir: str, runs: Sequence[tuple[str, str]]) -> str:
  """Per run: seed, backend, XLA_FLAGS, convolutions and relative links to its record files;
  the key package versions; how GPU runs are made deterministic."""
  rows, versions = [], {}
  for name, run_dir in runs:
    env = optional_json(os.path.join(run_dir, "env_info.json"), {})
    config = optional_json(os.path.join(run_dir, "config.json"), {})
    versions = versions or env.get("packages", {})
    files = [html.link(relative(os.path.join(run_dir, f), workdir), f) for f in RUN_FILES
             if os.path.exists(os.path.join(run_dir, f))]
    rows.append((name, env.get("seed", config.get("seed")), env.get("backend"),
                 env.get("xla_flags") or "(unset)", env.get("convolutions", "-"), files))
  body = html.html_table(
      ["run", "seed", "backend", "XLA_FLAGS", "convolutions", "records"],
      [[(html.text(n), False), (html.text(s), True), (html.text(b), False),
        (f"<code>{html.text(x)}</code>", False), (html.text(c), False),
        (" &middot; ".join(links), False)]
       for n, s, b, x, c, links in rows],
      caption="Seeds and run records (links relative to this report)")
  if versions:
    body += html.key_value_table([(k, versions[k]) for k in KEY_VERSIONS if versions.get(k)],
                                 caption="Package versions (all pins: requirements.lock)")
  notes = "".join(f"<li>{note}</li>" for note in DETERMINISM_NOTES)
  return body + f"<h4>Determinism</h4><ul class=\"notes\">{notes}</ul>"


# ------------------------------------------------------------------ the page

def run_parts(run_dir: str, base: str, with_dataset: bool = True) -> list[Part]:
  """The sections of one run dir, in page order."""
  config = optional_json(os.path.join(run_dir, "config.json"))
  parts = [Part("configuration", "Configuration", configuration_body(
      json.dumps(config, indent=2, sort_keys=True) if config else None,
      f"{relative(os.path.join(run_dir, 'config.json'), base)}: {run_label(config or {})}"))]
  if with_dataset:
    parts.append(Part("dataset", "Dataset", dataset_body(run_dir)))
  parts.append(Part("results", "Results", run_results_body(run_dir)))
  parts += training_parts(run_dir, base)
  return parts + topic_parts(run_dir, base)


def render_parts(parts: Sequence[Part], prefix: str = "", level: int = 2) -> tuple[str, list]:
  """(HTML of the parts with a body, [(id, title)] for the navigation)."""
  shown = [p for p in parts if p.body]
  ids = [html.anchor_id(prefix, p.key) if prefix else p.key for p in shown]
  return ("".join(html.section(i, p.title, p.body, level) for i, p in zip(ids, shown)),
          [(i, p.title) for i, p in zip(ids, shown)])


def run_page(config, workdir: str) -> tuple[str, list]:
  """(body, navigation groups) of a run dir's page."""
  own_config = optional_json(os.path.join(workdir, "config.json")) or config_dict(config)
  parts = [Part("summary", "Run summary",
                stale_warning([("run", workdir)], pipeline=False) +
                summary_body(workdir, own_config, [("run", workdir)], pipeline=False))]
  parts += run_parts(workdir, workdir)
  parts.append(Part("reproducibility", "Reproducibility",
                    reproducibility_body(workdir, [("run", workdir)])))
  body, entries = render_parts(parts)
  return body, [("Sections", None, entries)]


def pipeline_dataset(runs: Sequence[tuple[str, str]]) -> str:
  """The dataset section of a pipeline: from the variant with the most modalities (its task
  info names every input), with the modalities of all variants."""
  if not runs:
    return ""
  richest = max(runs, key=lambda run: len(modalities_of(run[1])))[1]
  every = dict.fromkeys(m for _, run_dir in runs for m in modalities_of(run_dir))
  return dataset_body(richest, ", ".join(every))


def pipeline_page(config, workdir: str) -> tuple[str, list]:
  """(body, navigation groups): the pipeline-level sections, each variant under its own
  heading, then reproducibility."""
  runs = variant_dirs(workdir)
  parts = [Part("summary", "Summary", stale_warning(runs, pipeline=True) +
                summary_body(workdir, config_dict(config), runs, True)),
           Part("configuration", "Configuration",
                configuration_body(config_text(config), "the pipeline's resolved config")),
           Part("dataset", "Dataset", pipeline_dataset(runs)),
           Part("results", "Results", pipeline_results_body(workdir))]
  body, entries = render_parts(parts + topic_parts(workdir, workdir))
  nav = [("Pipeline", None, entries)]
  for name, run_dir in runs:
    inner, children = render_parts(run_parts(run_dir, workdir, with_dataset=False), name, 3)
    variant_id = html.anchor_id("variant", name)
    label = run_label(optional_json(os.path.join(run_dir, "config.json"), {}))
    body += html.section(variant_id, f"Variant {name}: {label}", inner, 2, css_class="variant")
    nav.append((f"Variant {name}", variant_id, children))
  tail, _ = render_parts([Part("reproducibility", "Reproducibility",
                               reproducibility_body(workdir, runs))])
  return body + tail, nav + [("Reproducibility", "reproducibility", ())]


def draw_figures(workdir: str) -> list[str]:
  """The training figures of every run dir (and the pipeline's comparison bars)."""
  if not is_pipeline(workdir):
    return run_figures.run_figures(workdir)
  written = run_figures.pipeline_figures(workdir)
  for _, run_dir in variant_dirs(workdir):
    written += run_figures.run_figures(run_dir)
  return written


def build_report(config, workdir: str) -> str:
  """The report's HTML (figures already drawn)."""
  pipeline = is_pipeline(workdir)
  body, nav = (pipeline_page if pipeline else run_page)(config, workdir)
  name = os.path.basename(os.path.abspath(workdir))
  subtitle = ("Pipeline report: every variant's training, results and explanations."
              if pipeline else "Run report: training, results and explanations of one model.")
  return html.page(f"jaxmm report: {name}", subtitle, html.navigation(nav), body)


def run_report(config, workdir: str) -> str:
  """Draws the training figures, then writes `<workdir>/report.html` atomically; returns
  its path. `config` is the resolved config (shown for a pipeline dir; a run dir shows its
  own config.json). With several processes process 0 alone draws and writes; the others
  wait for it."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no workdir {workdir!r}")
  path = os.path.join(workdir, REPORT_NAME)
  distributed.on_process_zero(lambda: write_report(config, workdir, path),
                              f"report of {workdir}")
  return path


def write_report(config, workdir: str, path: str) -> None:
  draw_figures(workdir)
  write_text_atomic(path, build_report(config, workdir))
  print(f"report: {path}", flush=True)
