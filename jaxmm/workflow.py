"""The main job (`--mode=pipeline`): train every variant, evaluate on test, compare, explain.

Each variant is a full, resumable run in `workdir/<variant>/`; the comparison (a table shaped
like table 4 of paper 000, plus the fusion-vs-unimodal margins) goes to
`workdir/comparison.{csv,json}` and stdout. Then the saliency runner explains a sample of test
examples of `config.pipeline.saliency_variant` (Grad-CAM, IG + SmoothGrad, and the multimodal
IG when it has text or metadata) and overlay figures go to `workdir/<variant>/figures/saliency/`;
its explanations are evaluated on the test split (evaluation.runner: ROI agreement,
integrated feature analysis and the confounder finding on every example; faithfulness and
sanity on the first config.evaluation.faithfulness / sanity.num_examples) with tables under
`workdir/<variant>/analysis/` and figures under `.../figures/evaluation/`. Then come the
scikit-learn baselines on the embeddings of `config.pipeline.baselines_variant` (with SHAP of
its metadata models), SHAP of the saliency variant's metadata fields / report tokens, the
fairness slices and significance tests across every model, and `workdir/report.html`.

Several processes: every one trains (together) and makes its share of the saliency maps;
after that, process 0 alone evaluates, fits, draws and writes (the comparison, evaluation
units, baselines, SHAP files, fairness tables, figures, the report), while the others wait
for it at a barrier (distributed.on_process_zero). Computation that spans every process's
devices (restoring a checkpoint, SHAP's model calls) still runs on all of them.
"""
import csv
import io
import json
import os

import ml_collections

from jaxmm.baselines import runner as baselines_runner
from jaxmm.data.atomic import write_text_atomic
from jaxmm.evaluation import fairness_runner
from jaxmm.evaluation import runner as evaluation_runner
from jaxmm.evaluation.stats import format_table
from jaxmm.report import evaluation_figures, fairness_figures, report_runner, saliency_figures
from jaxmm.report import baselines_figures, shap_figures
from jaxmm.saliency import runner as saliency_runner
from jaxmm.saliency import shap_runner
from jaxmm.train import config_lib, distributed, loop

TABLE_COLUMNS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "pr_auc")
MULTILABEL_COLUMNS = ("masked_accuracy", "roc_auc", "pr_auc")


ANALYSIS_RUNNERS = {"saliency": saliency_runner, "evaluation": evaluation_runner,
                    "baselines": baselines_runner, "shap": shap_runner,
                    "fairness": fairness_runner}


def add_analysis_sections(config) -> ml_collections.ConfigDict:
  """Gives a config every analysis section with its defaults: config.saliency, .evaluation,
  .baselines, .shap and .fairness (each config file then adjusts them)."""
  for name, runner in ANALYSIS_RUNNERS.items():
    config[name] = runner.default_config()
  return config


def shrink_analysis_sections(config) -> ml_collections.ConfigDict:
  """The analysis sections cut to seconds (a config's `smoke` variant)."""
  for name, runner in ANALYSIS_RUNNERS.items():
    if hasattr(runner, "shrink_for_smoke"):
      runner.shrink_for_smoke(config[name])
  return config


def run_fairness(config, workdir: str) -> dict:
  """`--mode=fairness`: the fairness tables (evaluation.fairness_runner), then their figures;
  on process 0 ({} elsewhere: the others wait for it)."""
  def tables_and_figures():
    summary = fairness_runner.run_fairness(config, workdir)
    paths = fairness_figures.fairness_figures(workdir)
    print(f"fairness figures: {os.path.join(workdir, 'figures', 'fairness')} ({len(paths)} "
          f"files)", flush=True)
    return summary
  return distributed.on_process_zero(tables_and_figures, f"fairness of {workdir}") or {}


def run_baselines(config, workdir: str) -> dict:
  """`--mode=baselines`: the scikit-learn baselines, then their figures (figures/baselines/)
  and the SHAP figures of their metadata models (figures/shap/baselines_<task>_<model>/)."""
  summary = baselines_runner.run_baselines(config, workdir)  # {} on processes other than 0
  distributed.on_process_zero(lambda: draw_baselines_figures(workdir, summary),
                              f"baselines figures of {workdir}")
  return summary


def draw_baselines_figures(workdir: str, summary: dict) -> None:
  """figures/baselines/ and the SHAP figures of the metadata models `summary` explains."""
  paths = baselines_figures.baselines_figures(workdir)
  print(f"baselines figures: {os.path.join(workdir, 'figures', 'baselines')} ({len(paths)} "
        f"files)", flush=True)
  for task, task_summary in summary["tasks"].items():
    for model, info in task_summary.get("shap", {}).items():
      shap_figures.shap_figures(os.path.dirname(info["file"]), os.path.join(
          workdir, "figures", "shap", f"baselines_{task}_{model}"),
          title_prefix=f"{model} ({task}, {info['explainer']}): ")


def run_shap(config, workdir: str) -> dict:
  """`--mode=shap`: SHAP of the run's metadata fields / report tokens (computed by every
  process, written by process 0), then their figures (drawn by process 0)."""
  summary = shap_runner.run_shap(config, workdir)

  def draw():
    paths = shap_figures.shap_figures(summary["directory"],
                                      os.path.join(workdir, "figures", "shap"))
    print(f"SHAP figures: {os.path.join(workdir, 'figures', 'shap')} ({len(paths)} files)",
          flush=True)
  distributed.on_process_zero(draw, f"SHAP figures of {workdir}")
  return summary


def variant_config(config, name: str) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(config.to_dict())
  return config_lib.select_variant(cfg, name)


def comparison_rows(results: dict, split: str = "test") -> list:
  """One row per variant: modalities, fusion and the headline test metrics."""
  rows = []
  for name, (cfg, res) in results.items():
    metrics = res[split]
    columns = MULTILABEL_COLUMNS if cfg.data.get("multilabel") else TABLE_COLUMNS
    row = {"model": name, "modalities": "+".join(cfg.model.modalities),
           "fusion": cfg.model.fusion if len(cfg.model.modalities) > 1 else "-"}
    row.update({c: metrics[c] for c in columns})
    rows.append(row)
  return rows


def metric_score(value) -> float:
  """A metric value to rank rows by; an undefined one (None, NaN) ranks below every other."""
  return float("-inf") if value is None or value != value else float(value)


def fusion_margins(rows: list, metric: str) -> dict:
  """For each multimodal row, its `metric` minus the best unimodal row of each modality."""
  unimodal = {}
  for r in (r for r in rows if "+" not in r["modalities"]):
    best = unimodal.get(r["modalities"])
    if best is None or metric_score(r[metric]) > metric_score(best[metric]):
      unimodal[r["modalities"]] = r
  margins = {}
  for row in rows:
    if "+" not in row["modalities"]:
      continue
    margins[row["model"]] = {f"vs_{u['model']}": row[metric] - u[metric]
                             for u in unimodal.values()
                             if u["modalities"] in row["modalities"].split("+")}
  return margins


def write_comparison(workdir: str, rows: list, margins: dict) -> None:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  write_text_atomic(os.path.join(workdir, "comparison.csv"), buf.getvalue())
  write_text_atomic(os.path.join(workdir, "comparison.json"),
                    json.dumps({"rows": rows, "fusion_margins": margins}, indent=2))


def report_comparison(workdir: str, rows: list, margins: dict, metric: str) -> None:
  """Writes comparison.{csv,json} and prints the table and the fusion margins."""
  write_comparison(workdir, rows, margins)
  print(f"\nTest-split comparison ({workdir}/comparison.csv):\n{format_table(rows)}")
  for model, deltas in margins.items():
    text = ", ".join(f"{k[3:]} {v:+.3f}" for k, v in deltas.items())
    print(f"{model} {metric} margin over unimodal models: {text}")


def check_analysis_sections(config) -> None:
  """Each analysis section checked by its runner's own config function (ANALYSIS_RUNNERS:
  unknown keys, bad names, a checkpoint other than best / latest), so the main job fails at
  once, not after training every variant."""
  for name, runner in ANALYSIS_RUNNERS.items():
    getattr(runner, f"{name}_config")(config)


def run_pipeline(config, workdir: str) -> dict:
  """Trains and evaluates each of `config.pipeline.variants`, then prints the comparison."""
  check_analysis_sections(config)
  results = {}
  for name in config.pipeline.variants:
    cfg = variant_config(config, name)
    print(f"== {name}: modalities {'+'.join(cfg.model.modalities)}, fusion {cfg.model.fusion}",
          flush=True)
    results[name] = (cfg, loop.train_and_evaluate(cfg, os.path.join(workdir, name)))
  rows = comparison_rows(results)
  metric = "roc_auc" if config.data.get("multilabel") else "macro_f1"
  margins = fusion_margins(rows, metric)
  distributed.on_process_zero(lambda: report_comparison(workdir, rows, margins, metric),
                              f"comparison of {workdir}")
  figures = explain_sample(config, workdir, results)
  evaluation = evaluate_explanations(config, workdir, results)
  baselines = run_variant_step(config, workdir, results, "baselines_variant", "baselines",
                               run_baselines)
  shap = run_variant_step(config, workdir, results, "saliency_variant", "shap", run_shap)
  fairness = run_fairness(config, workdir) if config.pipeline.get("fairness") else {}
  report = report_runner.run_report(config, workdir) if config.pipeline.get("report") else None
  return {"rows": rows, "fusion_margins": margins, "saliency_figures": figures,
          "explanation_evaluation": evaluation, "baselines": baselines, "shap": shap,
          "fairness": fairness, "report": report}


def run_variant_step(config, workdir: str, results: dict, variant_key: str, flag: str,
                     step_fn) -> dict:
  """`step_fn(cfg, run_dir)` on the variant named by config.pipeline.<variant_key>, when
  config.pipeline.<flag> is set and that variant was trained."""
  name = config.pipeline.get(variant_key)
  if not config.pipeline.get(flag) or not name or name not in results:
    return {}
  cfg = results[name][0]
  if flag == "shap" and not {"meta", "text"} & set(cfg.model.modalities):
    return {}  # SHAP explains metadata fields and report tokens
  print(f"\n== {flag} of {name}", flush=True)
  return step_fn(cfg, os.path.join(workdir, name))


def evaluate_explanations(config, workdir: str, results: dict) -> dict:
  """The explanation evaluation of the saliency variant (evaluation.runner), with figures."""
  name = config.pipeline.get("saliency_variant")
  if not name or name not in results or not config.pipeline.get("evaluate_explanations"):
    return {}
  cfg, res = results[name]
  print(f"\n== explanations of {name} on {evaluation_runner.evaluation_config(cfg).split}",
        flush=True)
  return run_evaluate_explanations(cfg, os.path.join(workdir, name), res["task"]["class_names"])


def run_evaluate_explanations(config, workdir: str, class_names=None) -> dict:
  """`--mode=evaluate_explanations`: the explanation evaluation (evaluation.runner), then its
  figures (figures/evaluation/), on process 0 after the maps. class_names: None reads them
  from the analysis files."""
  summary = evaluation_runner.run_evaluation(config, workdir)  # {} on processes other than 0

  def draw():
    if summary:
      paths = evaluation_figures.evaluation_figures(workdir, class_names)
      print(f"evaluation figures: {os.path.join(workdir, 'figures', 'evaluation')} "
            f"({len(paths)} files)", flush=True)
  distributed.on_process_zero(draw, f"evaluation figures of {workdir}")
  return summary


def explain_sample(config, workdir: str, results: dict) -> list:
  """Saliency maps and overlay figures for the first test examples of the saliency variant."""
  name = config.pipeline.get("saliency_variant")
  if not name or name not in results or not config.pipeline.get("saliency_examples"):
    return []
  trained, res = results[name]
  # A copy: the sample's settings (shard size, output name) must not leak into the variant's
  # config, which the explanation evaluation then runs with (as --mode=evaluate_explanations
  # on the same config would).
  cfg = ml_collections.ConfigDict(trained.to_dict())
  with cfg.unlocked():
    cfg.saliency = saliency_runner.saliency_config(cfg)
    cfg.saliency.max_examples = int(config.pipeline.saliency_examples)
    cfg.saliency.shard_size = cfg.saliency.max_examples
    cfg.saliency.output_name = f"{cfg.saliency.split}_sample"
    cfg.saliency.progress = cfg.train.get("progress", True)
  run_dir = os.path.join(workdir, name)
  summary = saliency_runner.run_saliency(cfg, run_dir)  # every process: its shards

  def draw() -> list:
    data = saliency_runner.load_saliency(summary["directory"])
    paths = saliency_figures.saliency_figures(
        data, summary["methods"], res["task"]["class_names"], cfg.model.modalities,
        os.path.join(run_dir, "figures", "saliency"), summary["meta_field_names"],
        max_examples=len(data["index"]))
    print(f"saliency overlays of {len(data['index'])} test examples of {name} "
          f"({', '.join(summary['methods'])}): {', '.join(paths)}", flush=True)
    return paths
  return distributed.on_process_zero(draw, f"saliency figures of {run_dir}") or []
