"""`--mode=fairness`: subgroup slices and significance tests of a run's or a pipeline's models.

Reads what training and the baselines wrote, never a checkpoint:
  <run>/predictions/<split>.npz            logits [N, K], label [N], index [N] and the group
                                           fields (sex, age, localization, site, ...)
  <run>/baselines/<task>/predictions.npz   label, index, probs/<model> [N, K], the group
                                           fields, split and val_macro_f1/<model> (skipped
                                           quietly when absent; a file of another split than
                                           config.fairness.split is left out, with one line
                                           saying so; a file without split holds test rows)
  <run>/analysis/roi_agreement/<method>_per_case.csv    per-case explanation metrics (each
                                           case's best image, paper 004 Sec. 3.5: the table
                                           roi_agreement/group_tests.csv tests)
For a run dir the run is the workdir itself; for a pipeline workdir (comparison.json and one
run dir per variant) every variant, written at the pipeline level. Models scored on the same
examples form a family: the jaxmm variants (joined on `index`), and the baselines of one task.
The headline model of a baseline family (printed, and given accuracy-by-subgroup figures) is
the one with the best validation macro-F1 the baselines recorded, never chosen on the
evaluated split; every jaxmm variant is a headline model.

Into <workdir>/analysis/fairness/ (paper 000, sections 8-9):
  slices.csv             per model, attribute and category: support, accuracy (bootstrap CI at
                         config.fairness.confidence, 95% by default), macro-F1, ROC-AUC
                         (tables 6-8)
  ztests.csv             two-proportion z-tests of accuracy between the categories of an
                         attribute, Bonferroni within the attribute
  paired_tests.csv       McNemar between each fusion model and each unimodal model of a family,
                         Friedman across a family's models when it has >= 3 (table 9's shape)
  headline_ci.csv        bootstrap CIs (the same level) of accuracy, macro-F1 and ROC-AUC of
                         every model
  explanation_slices.csv, explanation_tests.csv   the explanation metrics per category, and
                         t-test / ANOVA between categories, one value per case (when
                         roi_agreement per-case tables exist)
  fairness.json          all of the above, the families and the config
A table that comes out empty has no CSV (an earlier run's is removed). With several processes
jaxmm.workflow.run_fairness runs this on process 0 alone.
"""
import contextlib
import csv
import dataclasses
import functools
import glob
import json
import os

import ml_collections
import numpy as np
import scipy.special

from jaxmm.evaluation import fairness, stats
from jaxmm.train import config_lib

JAXMM_FAMILY = "jaxmm"
NON_GROUP_KEYS = ("logits", "label", "index")
# Keys of baselines/<task>/predictions.npz (jaxmm.baselines.runner.predictions_arrays).
BASELINE_PROBS = "probs/"
BASELINE_SELECTION = "val_macro_f1/"  # 0-d validation macro-F1 of each model
BASELINE_SPLIT = "split"  # 0-d str; absent from files written before it was recorded
BASELINE_DEFAULT_SPLIT = "test"  # those files always held the test rows
# Reference label fields a baseline task's labels may equal in the run's predictions.
LABEL_FIELDS = ("label", "malignant", "label_multiclass")
# Baseline model names start with their inputs: fusion_logreg, late_fusion_svm, image_knn, ...
FUSION_PREFIXES = ("late_fusion", "early_fusion", "fusion", "late", "early", "concat")
MODALITY_PREFIXES = ("image", "metadata", "meta", "text", "tabular")
MAX_PRINTED_TESTS = 10
# The ROI-agreement table with one row per case (jaxmm.evaluation.runner.roi_method).
PER_CASE_SUFFIX = "_per_case.csv"


def default_config() -> ml_collections.ConfigDict:
  """config.fairness (any key may be overridden on the command line)."""
  return ml_collections.ConfigDict({
      "split": "test",
      "attributes": fairness.ATTRIBUTES,  # those the predictions have; age_group from age
      "num_resamples": 1000,
      # smaller categories are left out of slices and tests (their CI spans most of [0, 1])
      "min_support": 5,
      "alpha": 0.05,
      "confidence": 0.95,
      "seed": 0,
      "explanation_metrics": ("dice", "spearman"),
  })


def fairness_config(config) -> ml_collections.ConfigDict:
  """The defaults updated with `config.fairness` (unknown keys raise with the closest one)."""
  out = default_config()
  section = config.get("fairness") if config is not None else None
  for key, value in config_lib.checked_items(section, out, "config.fairness"):
    out[key] = tuple(value) if isinstance(value, list) else value
  return out


# ------------------------------------------------------------------ reading

@dataclasses.dataclass
class Family:
  """Models scored on the same examples, rows aligned: labels [N], index [N], groups
  {field: [N]}, probs {model: [N, K]}, kinds {model: "fusion" / its modality / ""} and
  pair_keys {model: key} (McNemar pairs a fusion and a unimodal model with equal keys);
  selection {model: validation macro-F1} for a baseline family (None for the jaxmm one)."""
  name: str
  labels: np.ndarray
  index: np.ndarray
  groups: dict
  probs: dict
  kinds: dict
  pair_keys: dict
  class_names: list | None = None
  selection: dict | None = None


def read_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as data:
    return {key: data[key] for key in data.files}


def read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def predictions_path(run_dir: str, split: str) -> str:
  return os.path.join(run_dir, "predictions", f"{split}.npz")


def run_dirs(workdir: str, split: str) -> tuple[dict, bool]:
  """({name: run dir}, is_pipeline): the variants of a pipeline workdir (comparison.json's
  rows, else the sub-dirs with predictions), or the workdir itself named by its variant."""
  comparison = read_json(os.path.join(workdir, "comparison.json"))
  if comparison is not None:
    names = [row["model"] for row in comparison["rows"]]
  elif os.path.isdir(os.path.join(workdir, "predictions")) or os.path.exists(
      os.path.join(workdir, "config.json")):
    config = read_json(os.path.join(workdir, "config.json"), {})
    return {config.get("variant") or os.path.basename(os.path.normpath(workdir)): workdir}, False
  else:
    names = sorted(d for d in os.listdir(workdir)
                   if os.path.exists(predictions_path(os.path.join(workdir, d), split)))
  return {name: os.path.join(workdir, name) for name in names
          if os.path.isdir(os.path.join(workdir, name))}, True


def variant_kind(run_dir: str) -> str:
  """"fusion" for a model of several modalities, else its one modality (config.json)."""
  modalities = read_json(os.path.join(run_dir, "config.json"), {}).get("model", {}).get(
      "modalities", ())
  return "fusion" if len(modalities) > 1 else (modalities[0] if modalities else "")


def class_names_of(run_dir: str) -> list | None:
  task = read_json(os.path.join(run_dir, "results.json"), {}).get("task", {})
  return task.get("class_names")


def positions(index: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
  """Row of each `wanted` value in `index` (unique values); KeyError names what is missing."""
  index = np.asarray(index)
  if np.unique(index).size != index.size:
    raise ValueError(f"{where}: 'index' has repeated values; it must name each example once")
  order = np.argsort(index, kind="stable")
  found = np.searchsorted(index[order], wanted).clip(0, max(index.size - 1, 0))
  missing = index.size == 0 or (index[order][found] != wanted).any()
  if missing:
    raise KeyError(f"{where}: examples {np.setdiff1d(wanted, index)[:5].tolist()} are absent")
  return order[found]


def load_variants(dirs: dict, split: str) -> dict:
  """{name: (path, predictions)} of the run dirs with single-label predictions of `split`."""
  loaded = {}
  for name, run_dir in dirs.items():
    path = predictions_path(run_dir, split)
    if not os.path.exists(path):
      print(f"fairness: {name}: no {path} (written by evaluation since predictions were "
            f"added; run --mode=eval on {run_dir}); skipped", flush=True)
      continue
    data = read_npz(path)
    if np.asarray(data["label"]).ndim != 1:
      print(f"fairness: {name}: multilabel predictions are not sliced; skipped", flush=True)
      continue
    loaded[name] = (path, data)
  return loaded


def jaxmm_family(dirs: dict, split: str) -> Family | None:
  """The jaxmm variants' predictions on the examples they share (joined on index; softmax of
  the logits); ValueError when they share none or their labels differ."""
  loaded = load_variants(dirs, split)
  if not loaded:
    return None
  common = functools.reduce(np.intersect1d, [d["index"] for _, d in loaded.values()])
  if common.size == 0:
    raise ValueError(f"fairness: the predictions {[p for p, _ in loaded.values()]} share no "
                     f"example index")
  first_name, (first_path, first) = next(iter(loaded.items()))
  first_rows = positions(first["index"], common, first_path)
  reference = first["label"][first_rows]
  probs = {}
  for name, (path, data) in loaded.items():
    rows = positions(data["index"], common, path)
    if not np.array_equal(data["label"][rows], reference):
      raise ValueError(f"fairness: the labels of {path} differ from those of {first_path} on "
                       f"{int(np.sum(data['label'][rows] != reference))} of {common.size} "
                       f"examples with the same index; were the variants evaluated on the "
                       f"same data?")
    probs[name] = scipy.special.softmax(np.asarray(data["logits"][rows], np.float64), axis=1)
  groups = {k: v[first_rows] for k, v in first.items() if k not in NON_GROUP_KEYS}
  kinds = {name: variant_kind(dirs[name]) for name in probs}
  return Family(JAXMM_FAMILY, reference, common, groups, probs, kinds,
                {name: "" for name in probs}, class_names_of(dirs[first_name]))


def baseline_kind(name: str) -> tuple[str, str]:
  """(kind, rest) of a baseline model name: ("fusion", "logreg") for fusion_logreg and
  late_fusion_logreg, ("image", "logreg") for image_logreg, ("", name) otherwise."""
  for prefix in FUSION_PREFIXES + MODALITY_PREFIXES:
    if name == prefix or name.startswith(prefix + "_"):
      kind = "fusion" if prefix in FUSION_PREFIXES else prefix
      return kind, name[len(prefix) + 1:]
  return "", name


def is_group_field(key: str, value) -> bool:
  """Whether a baselines predictions.npz entry is a per-example group field [N] (not label,
  index, probabilities, the 0-d split or the validation scores)."""
  return (key not in NON_GROUP_KEYS and np.ndim(value) >= 1
          and not key.startswith((BASELINE_PROBS, BASELINE_SELECTION)))


def checked_groups(baseline: dict, predictions: dict | None, path: str, pred_path: str) -> dict:
  """The baseline file's group fields, completed from the run's predictions (joined on
  index) when it lacks some; ValueError when its labels match no label field there."""
  groups = {k: v for k, v in baseline.items() if is_group_field(k, v)}
  if predictions is None:
    return groups
  shared = np.intersect1d(baseline["index"], predictions["index"])
  if shared.size == 0:
    raise ValueError(f"fairness: {path} and {pred_path} share no example index")
  mine = baseline["label"][positions(baseline["index"], shared, path)]
  theirs = positions(predictions["index"], shared, pred_path)
  fields = [f for f in LABEL_FIELDS if f in predictions and predictions[f].ndim == 1]
  if not any(np.array_equal(mine, predictions[f][theirs]) for f in fields):
    raise ValueError(f"fairness: the labels of {path} agree with none of {fields} of "
                     f"{pred_path} on the {shared.size} examples they share (joined on "
                     f"index); the baselines were fit on another split or dataset")
  if np.isin(baseline["index"], shared).all():
    rows = positions(predictions["index"], baseline["index"], pred_path)
    for field, column in predictions.items():
      if field not in NON_GROUP_KEYS and field not in groups:
        groups[field] = column[rows]
  return groups


def baseline_split(data: dict) -> str:
  """The split whose rows a baselines predictions.npz holds ("test" for files written before
  the split was recorded: the baselines have always been scored on test only)."""
  return str(data[BASELINE_SPLIT]) if BASELINE_SPLIT in data else BASELINE_DEFAULT_SPLIT


def selection_scores(data: dict, run_dir: str, task: str, models) -> dict | None:
  """{model: validation macro-F1} of a baselines predictions file: its val_macro_f1/<model>
  entries, else (older files) the val_macro_f1 of the task's rows in baselines.json; None
  when some model has none."""
  scores = {k[len(BASELINE_SELECTION):]: float(v) for k, v in data.items()
            if k.startswith(BASELINE_SELECTION)}
  if not scores:
    summary = read_json(os.path.join(run_dir, "baselines", "baselines.json"), {})
    rows = summary.get("tasks", {}).get(task, {}).get("rows", [])
    scores = {r["model"]: float(r["val_macro_f1"]) for r in rows if "val_macro_f1" in r}
  return scores if all(m in scores for m in models) else None


def baseline_tasks(run_dir: str) -> list | None:
  """The tasks `<run_dir>/baselines/baselines.json` holds (None without the file), so a task
  folder an earlier baselines run left is not scored as this run's (as the report does)."""
  tasks = read_json(os.path.join(run_dir, "baselines", "baselines.json"), {}).get("tasks")
  return None if tasks is None else list(tasks)


def baseline_families(run_dir: str, run_name: str | None, split: str) -> tuple[list, list]:
  """(families, left out): one family per `<run_dir>/baselines/<task>/predictions.npz` of
  `split` for the tasks baselines.json lists (baseline_tasks; none when absent), and
  "<name> (<its split>)" of each file of another split."""
  pred_path = predictions_path(run_dir, split)
  predictions = read_npz(pred_path) if os.path.exists(pred_path) else None
  families, left_out = [], []
  listed = baseline_tasks(run_dir)
  for path in sorted(glob.glob(os.path.join(run_dir, "baselines", "*", "predictions.npz"))):
    task = os.path.basename(os.path.dirname(path))
    if listed is not None and task not in listed:
      continue
    name = "/".join(filter(None, (run_name, "baselines", task)))
    data = read_npz(path)
    probs = {k[len(BASELINE_PROBS):]: np.asarray(v, np.float64) for k, v in data.items()
             if k.startswith(BASELINE_PROBS)}
    if not probs:
      continue
    if baseline_split(data) != split:
      left_out.append(f"{name} ({baseline_split(data)})")
      continue
    for key in ("label", "index"):
      if key not in data:
        raise KeyError(f"fairness: {path} has no {key!r}; keys: {sorted(data)}")
    groups = checked_groups(data, predictions, path, pred_path)
    kinds = {m: baseline_kind(m) for m in probs}
    families.append(Family(name, np.asarray(data["label"]).astype(np.int64), data["index"],
                           groups, probs, {m: k for m, (k, _) in kinds.items()},
                           {m: rest for m, (_, rest) in kinds.items()},
                           selection=selection_scores(data, run_dir, task, probs)))
  return families, left_out


def families_of(workdir: str, split: str) -> tuple[list, dict, bool]:
  """(families, run dirs, is_pipeline) of a workdir; FileNotFoundError when it has none."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"fairness: workdir {workdir} does not exist")
  dirs, pipeline = run_dirs(workdir, split)
  families = [f for f in [jaxmm_family(dirs, split)] if f is not None]
  left_out = []
  for name, run_dir in dirs.items():
    found, other = baseline_families(run_dir, name if pipeline else None, split)
    families += found
    left_out += other
  if left_out:
    print(f"fairness: baseline families left out, their predictions are of another split "
          f"than {split!r} (--mode=baselines scores test only): {', '.join(left_out)}",
          flush=True)
  if not families:
    raise FileNotFoundError(
        f"fairness: no predictions/{split}.npz and no baselines/<task>/predictions.npz of "
        f"split {split!r} under {workdir} (run dirs: {sorted(dirs)}; baselines of other "
        f"splits: {', '.join(left_out) or 'none'}); train or evaluate first (--mode=train / eval)")
  return families, dirs, pipeline


# ------------------------------------------------------------------ analysis

def correctness(family: Family) -> dict:
  return {m: p.argmax(1) == family.labels for m, p in family.probs.items()}


def family_slices(family: Family, fcfg) -> list:
  rows = []
  for model, probs in family.probs.items():
    for row in fairness.subgroup_slices(
        family.labels, probs, family.groups, model, family.class_names,
        min_support=fcfg.min_support, num_resamples=fcfg.num_resamples, seed=fcfg.seed,
        confidence=fcfg.confidence, attributes=fcfg.attributes):
      rows.append({"family": family.name, **row})
  return rows


def headline_rows(family: Family, fcfg) -> list:
  """Bootstrap CIs of the headline metrics of every model of the family."""
  rows = []
  for model, probs in family.probs.items():
    for metric in fairness.HEADLINE_METRICS:
      summary = fairness.bootstrap_summary(family.labels, probs, metric, fcfg.num_resamples,
                                           fcfg.seed, fcfg.confidence)
      rows.append({"family": family.name, "model": model, "metric": metric,
                   "n": int(family.labels.size), **summary})
  return rows


def mcnemar_pairs(family: Family) -> list:
  """(fusion, unimodal) model pairs with equal pair keys."""
  fused = [m for m, k in family.kinds.items() if k == "fusion"]
  single = [m for m, k in family.kinds.items() if k and k != "fusion"]
  return [(f, u) for f in fused for u in single
          if family.pair_keys[f] == family.pair_keys[u]]


def paired_tests(family: Family, alpha: float) -> list:
  """McNemar rows (Bonferroni within the family) and the Friedman row (>= 3 models)."""
  correct = correctness(family)
  tests = []
  for a, b in mcnemar_pairs(family):
    tests.append({"family": family.name, "models": f"{a} vs {b}", "model_a": a, "model_b": b,
                  **fairness.mcnemar(correct[a], correct[b])})
  rows = stats.bonferroni(tests, alpha) if tests else []
  if len(correct) >= 3:
    names = list(correct)
    result = fairness.friedman(np.stack([correct[m] for m in names], 1).astype(float), names)
    ranks = result.pop("mean_ranks")
    rows.append({"family": family.name, **result, "models": ",".join(names),
                 "mean_ranks": "; ".join(f"{m} {r:.3f}" for m, r in ranks.items())})
  return rows


def read_csv_columns(path: str) -> dict:
  """A CSV as {column: array of str}."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return {key: np.array([row[key] for row in rows], dtype=str) for key in (rows[0] if rows
                                                                            else {})}


def explanation_rows(run_name: str, run_dir: str, fcfg) -> tuple[list, list]:
  """Slices and group tests of the explanation metrics in analysis/roi_agreement/, one row per
  case (<method>_per_case.csv, the rows agreement.group_tests tests: a case photographed
  several times would otherwise count several times)."""
  slices, tests = [], []
  pattern = os.path.join(run_dir, "analysis", "roi_agreement", "*" + PER_CASE_SUFFIX)
  for path in sorted(glob.glob(pattern)):
    method = os.path.basename(path)[:-len(PER_CASE_SUFFIX)]
    table = read_csv_columns(path)
    method_tests = []
    for metric in (m for m in fcfg.explanation_metrics if m in table):
      key = {"run": run_name, "method": method}
      slices += [{**key, **row} for row in fairness.explanation_slices(
          table, metric, fcfg.attributes, num_resamples=fcfg.num_resamples, seed=fcfg.seed,
          confidence=fcfg.confidence)]
      method_tests += [{**key, **row} for row in fairness.explanation_tests(
          table, metric, fcfg.attributes)]
    tests += stats.bonferroni(method_tests, fcfg.alpha) if method_tests else []
  return slices, tests


def headline_models(families: list) -> list:
  """Every jaxmm variant, and of each baseline family the model with the best validation
  macro-F1 (Family.selection; the first on ties), never the evaluated split's best, which
  would favour the model that got lucky on the very examples it is then reported on. A
  baseline family without validation scores gets no headline model. Each pick says in
  "selected_by" how it was chosen."""
  out = []
  for family in families:
    if family.selection is None and family.name != JAXMM_FAMILY:
      continue
    if family.selection is None:
      out += [{"family": family.name, "model": m, "selected_by": "every jaxmm variant"}
              for m in family.probs]
      continue
    scores = family.selection
    model = max(family.probs, key=lambda m: np.nan_to_num(scores[m], nan=-np.inf))
    out.append({"family": family.name, "model": model,
                "selected_by": f"best validation macro-F1 ({fmt(scores[model])})"})
  return out


# ------------------------------------------------------------------ the mode

def run_fairness(config, workdir: str) -> dict:
  """Slices and tests of the workdir's models into <workdir>/analysis/fairness/ (module
  docstring); prints a short summary and returns everything written to fairness.json."""
  fcfg = fairness_config(config)
  families, dirs, pipeline = families_of(workdir, fcfg.split)
  result = {"config": fcfg.to_dict(), "split": fcfg.split,
            "workdir_kind": "pipeline" if pipeline else "run", "slices": [], "headline_ci": [],
            "paired_tests": [], "explanation_slices": [], "explanation_tests": [],
            "families": [{"name": f.name, "models": list(f.probs), "kinds": f.kinds,
                          "num_examples": int(f.labels.size), "class_names": f.class_names,
                          "validation_macro_f1": f.selection}
                         for f in families]}
  for family in families:
    result["slices"] += family_slices(family, fcfg)
    result["headline_ci"] += headline_rows(family, fcfg)
    result["paired_tests"] += paired_tests(family, fcfg.alpha)
  result["ztests"] = fairness.pairwise_ztests(result["slices"], fcfg.alpha)
  for name, run_dir in dirs.items():
    slices, tests = explanation_rows(name, run_dir, fcfg)
    result["explanation_slices"] += slices
    result["explanation_tests"] += tests
  result["headline_models"] = headline_models(families)
  result["summary"] = summary_lines(result)
  write_outputs(os.path.join(workdir, "analysis", "fairness"), result)
  print("\n".join(result["summary"]), flush=True)
  return result


OUTPUT_TABLES = (("slices", "slices.csv"), ("ztests", "ztests.csv"),
                 ("paired_tests", "paired_tests.csv"), ("headline_ci", "headline_ci.csv"),
                 ("explanation_slices", "explanation_slices.csv"),
                 ("explanation_tests", "explanation_tests.csv"))


def write_outputs(out_dir: str, result: dict) -> None:
  """Each non-empty table as CSV and fairness.json; an empty table's file from an earlier run
  is removed, so that the report cannot show it as this run's."""
  for key, name in OUTPUT_TABLES:
    path = os.path.join(out_dir, name)
    if result[key]:
      stats.write_table_csv(path, result[key])
    else:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
  stats.write_json(os.path.join(out_dir, "fairness.json"), result)


# ------------------------------------------------------------------ summary

def fmt(value, spec: str = ".3f") -> str:
  return "-" if value is None or np.isnan(value) else format(value, spec)


def gap_lines(result: dict, families: tuple) -> list:
  """The most significant accuracy gap (smallest p) of each attribute of each headline model
  of `families`, with its z and p."""
  lines = []
  for pick in (p for p in result["headline_models"] if p["family"] in families):
    tests = [t for t in result["ztests"]
             if t.get("family") == pick["family"] and t["model"] == pick["model"]]
    for attribute in dict.fromkeys(t["attribute"] for t in tests):
      t = min((t for t in tests if t["attribute"] == attribute),
              key=lambda t: np.nan_to_num(t["p"], nan=1.0))
      lines.append(f"{pick['model']} ({pick['family']}) {attribute}: {t['category_a']} "
                   f"{fmt(t['accuracy_a'])} (n={t['support_a']}) vs {t['category_b']} "
                   f"{fmt(t['accuracy_b'])} (n={t['support_b']}): gap {fmt(t['diff'], '+.3f')}, "
                   f"z {fmt(t['z'], '.2f')}, p {fmt(t['p'], '.2g')}"
                   f"{' (significant after Bonferroni)' if t['significant'] else ''}")
  return lines


def family_line(result: dict, family: str) -> str:
  """One line for a family not printed in full: its McNemar and Friedman results in brief."""
  rows = [r for r in result["paired_tests"] if r["family"] == family]
  alpha = result["config"]["alpha"]
  mcnemar = [r for r in rows if r["test"] == "mcnemar"]
  significant = sum(1 for r in mcnemar if np.nan_to_num(r["p"], nan=1.0) < alpha)
  line = f"{family}: {significant} of {len(mcnemar)} McNemar tests (fusion vs unimodal) p < {alpha}"
  for r in (r for r in rows if r["test"] == "friedman"):
    line += (f"; Friedman across {r['num_models']} models {fmt(r['statistic'], '.1f')}, "
             f"p {fmt(r['p'], '.2g')}")
  return line


def test_lines(result: dict, families: tuple) -> list:
  lines = []
  for family in (f for f in result["families"] if f["name"] in families):
    rows = [r for r in result["paired_tests"] if r["family"] == family["name"]]
    mcnemar = [r for r in rows if r["test"] == "mcnemar"]
    for r in mcnemar[:MAX_PRINTED_TESTS]:
      lines.append(f"McNemar {r['models']} ({family['name']}): statistic "
                   f"{fmt(r['statistic'], '.2f')} ({r['method']}; b {r['b']}, c {r['c']}), "
                   f"p {fmt(r['p'], '.2g')}")
    if len(mcnemar) > MAX_PRINTED_TESTS:
      lines.append(f"... {len(mcnemar) - MAX_PRINTED_TESTS} more McNemar tests of "
                   f"{family['name']} in paired_tests.csv")
    for r in (r for r in rows if r["test"] == "friedman"):
      lines.append(f"Friedman across {r['num_models']} models of {family['name']} "
                   f"(n={r['n']}): statistic {fmt(r['statistic'], '.2f')}, p "
                   f"{fmt(r['p'], '.2g')}, Kendall's W {fmt(r['kendall_w'])}; mean ranks "
                   f"{r['mean_ranks']}")
  return lines


def summary_lines(result: dict) -> list:
  picks = {(p["family"], p["model"]): p["selected_by"] for p in result["headline_models"]}
  accuracy = [r for r in result["headline_ci"] if r["metric"] == "accuracy" and
              (r["family"], r["model"]) in picks]
  lines = [(f"Fairness ({result['split']} split): accuracy with bootstrap "
            f"{stats.level_percent(result['config']['confidence'])} CI")]
  lines += [(f"  {r['model']} ({r['family']}): {fmt(r['estimate'])} "
             f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
             f"{'' if r['family'] == JAXMM_FAMILY else ', ' + picks[(r['family'], r['model'])]}")
            for r in accuracy]
  lines += [f"  {f['name']}: no headline model (its predictions.npz and baselines.json record "
            f"no validation macro-F1; re-run --mode=baselines)" for f in result["families"]
            if f["name"] != JAXMM_FAMILY and f["validation_macro_f1"] is None]
  # The first family (the jaxmm models of a pipeline) in full, the others in one line each.
  names = [f["name"] for f in result["families"]]
  shown = tuple(names[:1])
  lines += ["Most significant accuracy gap per attribute (two-proportion z-test):"]
  lines += ["  " + line for line in gap_lines(result, shown)]
  tests = test_lines(result, shown) or [
      "none (a family needs a fusion and a unimodal model, or 3 models)"]
  tests += [family_line(result, name) for name in names[1:]]
  return lines + ["Paired tests of correctness:"] + ["  " + line for line in tests]
