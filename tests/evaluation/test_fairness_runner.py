"""--mode=fairness on a fake pipeline workdir: predictions written with the training loop's
writer, a baselines file, an ROI-agreement table; the CSVs checked against hand computations."""
import csv
import json
import os
import shutil
import types

import ml_collections
import numpy as np
import pytest
import scipy.special
import scipy.stats
from matplotlib.text import Text

from jaxmm.data.atomic import write_npz_atomic
from jaxmm.evaluation import agreement, fairness, fairness_runner, stats
from jaxmm.report import fairness_figures, report_runner
from jaxmm.train import loop

N = 120
CLASS_NAMES = ["nv", "mel", "bkl"]
VARIANTS = {"image": (("image",), 1.0), "meta": (("meta",), 0.4),
            "concat": (("image", "meta"), 2.0)}
BASELINES = {"fusion_logreg": 2.0, "image_logreg": 1.0, "metadata_logreg": 0.3}
# Validation macro-F1 as the baselines record it: image_logreg is the best on validation,
# fusion_logreg (the strongest scores) the most accurate on test.
VALIDATION_F1 = {"fusion_logreg": 0.7, "image_logreg": 0.8, "metadata_logreg": 0.4}


def noisy_scores(rng, labels, k, strength):
  logits = rng.normal(size=(labels.size, k))
  logits[np.arange(labels.size), labels] += strength
  return logits


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def make_pipeline(root):
  """Three variants (meta's rows in another order), binary baselines for concat, and a
  Grad-CAM ROI table; returns the arrays in split order."""
  rng = np.random.default_rng(0)
  data = {"label": rng.integers(0, 3, N), "index": np.arange(N),
          "sex": rng.choice(["female", "male", "unknown"], N, p=[0.45, 0.45, 0.1]),
          "age": rng.choice([20.0, 30.0, 45.0, 60.0, 75.0, np.nan], N),
          "localization": rng.choice(["trunk", "back", "face"], N)}
  data["malignant"] = (data["label"] == 1).astype(np.int64)
  write_json(os.path.join(root, "comparison.json"), {"rows": [
      {"model": name, "modalities": "+".join(mods)} for name, (mods, _) in VARIANTS.items()]})
  for name, (modalities, strength) in VARIANTS.items():
    run_dir = os.path.join(root, name)
    write_json(os.path.join(run_dir, "config.json"),
               {"variant": name, "model": {"modalities": list(modalities)}})
    write_json(os.path.join(run_dir, "results.json"), {"task": {"class_names": CLASS_NAMES}})
    data[f"logits/{name}"] = noisy_scores(rng, data["label"], 3, strength).astype(np.float32)
    order = rng.permutation(N) if name == "meta" else np.arange(N)
    pred = {"logits": data[f"logits/{name}"], "label": data["label"], "index": data["index"],
            "sex": data["sex"].astype(object), "age": data["age"],
            "localization": data["localization"].astype(object),
            "malignant": data["malignant"]}
    loop.write_predictions(types.SimpleNamespace(workdir=run_dir), "test",
                           {k: v[order] for k, v in pred.items()})
  order = rng.permutation(N)
  baselines = {"label": data["malignant"][order], "index": data["index"][order],
               "split": np.asarray("test")}
  for model, strength in BASELINES.items():
    data[f"probs/{model}"] = scipy.special.softmax(
        noisy_scores(rng, data["malignant"], 2, strength), axis=1)
    baselines[f"probs/{model}"] = data[f"probs/{model}"][order]
    baselines[f"val_macro_f1/{model}"] = np.float64(VALIDATION_F1[model])
  write_npz_atomic(os.path.join(root, "concat", "baselines", "binary", "predictions.npz"),
                   baselines)
  data["dice"] = np.where(rng.random(N) < 0.1, np.nan, rng.random(N))
  # Three images per case, with their case's groups; the per-case table is the runner's
  # (agreement.evaluate_method's stats.case_level, each case's best Dice).
  case = np.arange(N) // 3
  images = {"index": np.arange(N), "case": case.astype(str), "sex": data["sex"][3 * case],
            "age": data["age"][3 * case], "dice": data["dice"]}
  data["roi_cases"] = stats.case_level(images, "case", ["dice"])
  folder = os.path.join(root, "concat", "analysis", "roi_agreement")
  for name, table in (("per_image", images), ("per_case", data["roi_cases"])):
    rows = [dict(zip(table, values)) for values in zip(*table.values())]
    stats.write_table_csv(os.path.join(folder, f"gradcam_{name}.csv"), rows)
  return data


def fairness_config(**overrides):
  return ml_collections.ConfigDict({"fairness": {"num_resamples": 200, "min_support": 1,
                                                 **overrides}})


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pipeline"))
  data = make_pipeline(root)
  result = fairness_runner.run_fairness(fairness_config(), root)
  return root, data, result


def correct_of(data, model):
  key = f"logits/{model}" if f"logits/{model}" in data else f"probs/{model}"
  labels = data["label"] if key.startswith("logits") else data["malignant"]
  return data[key].argmax(1) == labels


def test_outputs_and_slices(analysed):
  root, data, _ = analysed
  out = os.path.join(root, "analysis", "fairness")
  for name in ("slices.csv", "ztests.csv", "paired_tests.csv", "headline_ci.csv",
               "explanation_slices.csv", "explanation_tests.csv", "fairness.json"):
    assert os.path.exists(os.path.join(out, name)), name
  rows = read_rows(os.path.join(out, "slices.csv"))
  models = {(r["family"], r["model"]) for r in rows}
  assert models == {("jaxmm", m) for m in VARIANTS} | {
      ("concat/baselines/binary", m) for m in BASELINES}
  for family, model in models:  # group fields of the baselines come from the predictions
    for attribute in ("sex", "age_group", "localization"):
      assert sum(int(r["support"]) for r in rows if (r["family"], r["model"], r["attribute"])
                 == (family, model, attribute)) == N
  for model in ("meta", "fusion_logreg"):  # meta and the baselines were stored shuffled
    row = next(r for r in rows if r["model"] == model and r["category"] == "30-60")
    mask = np.isin(data["age"], [30.0, 45.0, 60.0])
    assert int(row["support"]) == mask.sum()
    assert float(row["accuracy"]) == pytest.approx(correct_of(data, model)[mask].mean())


def test_ztests_and_headline_intervals(analysed):
  root, data, result = analysed
  tests = [t for t in result["ztests"] if t["model"] == "concat" and t["attribute"] == "sex"]
  assert [(t["category_a"], t["category_b"]) for t in tests] == [
      ("female", "male"), ("female", "unknown"), ("male", "unknown")]
  correct = correct_of(data, "concat")
  female, male = correct[data["sex"] == "female"], correct[data["sex"] == "male"]
  expected = fairness.two_proportion_ztest(female.sum(), female.size, male.sum(), male.size)
  assert (tests[0]["z"], tests[0]["p"]) == pytest.approx((expected["z"], expected["p"]))
  assert tests[0]["alpha_adjusted"] == pytest.approx(0.05 / 3)
  headline = read_rows(os.path.join(root, "analysis", "fairness", "headline_ci.csv"))
  assert len(headline) == 3 * (len(VARIANTS) + len(BASELINES))
  for row in (r for r in headline if r["metric"] == "accuracy"):
    assert float(row["estimate"]) == pytest.approx(correct_of(data, row["model"]).mean())
    assert float(row["ci_low"]) <= float(row["estimate"]) <= float(row["ci_high"])


def test_paired_tests(analysed):
  root, data, result = analysed
  rows = read_rows(os.path.join(root, "analysis", "fairness", "paired_tests.csv"))
  assert sorted((r["family"], r["test"], r["models"]) for r in rows) == [
      ("concat/baselines/binary", "friedman", "fusion_logreg,image_logreg,metadata_logreg"),
      ("concat/baselines/binary", "mcnemar", "fusion_logreg vs image_logreg"),
      ("concat/baselines/binary", "mcnemar", "fusion_logreg vs metadata_logreg"),
      ("jaxmm", "friedman", "image,meta,concat"),
      ("jaxmm", "mcnemar", "concat vs image"), ("jaxmm", "mcnemar", "concat vs meta")]
  by_models = {r["models"]: r for r in rows}
  for a, b in (("concat", "meta"), ("fusion_logreg", "image_logreg")):
    expected = fairness.mcnemar(correct_of(data, a), correct_of(data, b))
    row = by_models[f"{a} vs {b}"]
    assert (int(row["b"]), int(row["c"]), row["method"]) == (expected["b"], expected["c"],
                                                             expected["method"])
    assert float(row["statistic"]) == pytest.approx(expected["statistic"])
    assert float(row["p"]) == pytest.approx(expected["p"])
  correct = np.stack([correct_of(data, m) for m in VARIANTS], 1).astype(float)
  reference = scipy.stats.friedmanchisquare(*correct.T)
  row = by_models["image,meta,concat"]
  assert float(row["statistic"]) == pytest.approx(reference.statistic)
  assert float(row["p"]) == pytest.approx(reference.pvalue)
  assert "McNemar concat vs image" in "\n".join(result["summary"])


def test_explanation_slices(analysed):
  # One value per case (paper 004), tested as agreement.group_tests tests it.
  root, data, _ = analysed
  cases = data["roi_cases"]
  rows = read_rows(os.path.join(root, "analysis", "fairness", "explanation_slices.csv"))
  male = next(r for r in rows if r["method"] == "gradcam" and r["metric"] == "dice"
              and r["attribute"] == "sex" and r["category"] == "male")
  dice = cases["dice"][cases["sex"] == "male"]
  assert (int(male["n"]), float(male["mean"])) == (np.sum(~np.isnan(dice)),
                                                   pytest.approx(np.nanmean(dice)))
  tests = read_rows(os.path.join(root, "analysis", "fairness", "explanation_tests.csv"))
  sex = next(t for t in tests if t["attribute"] == "sex")
  reference = stats.compare_groups(cases, "dice", "sex", dict(agreement.GROUP_TESTS)["sex"])
  assert (sex["test"], int(sex["n"])) == ("ttest", reference["n"])
  assert float(sex["p"]) == pytest.approx(reference["p"])


def test_figures(analysed):
  root, _, _ = analysed
  paths = fairness_figures.fairness_figures(root)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["accuracy_concat_baselines_binary_image_logreg.png",
                   "accuracy_jaxmm_concat.png", "accuracy_jaxmm_image.png",
                   "accuracy_jaxmm_meta.png", "headline_ci_concat_baselines_binary.png",
                   "headline_ci_jaxmm.png"]
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_intervals_are_labelled_with_the_confidence_level_used(tmp_path, monkeypatch):
  """config.fairness.confidence=0.975: the summary, the figures and the report's table title
  say 97.5% (they said 95% whatever the level, and the summary rounded it to 98%)."""
  root = str(tmp_path / "pipeline")
  make_pipeline(root)
  result = fairness_runner.run_fairness(fairness_config(confidence=0.975, num_resamples=20),
                                        root)
  assert result["config"]["confidence"] == 0.975
  assert result["summary"][0] == "Fairness (test split): accuracy with bootstrap 97.5% CI"
  drawn, save = {}, fairness_figures.save_figure

  def record(fig, path):  # the texts of each figure, then the figure saved as before
    drawn[os.path.basename(path)] = [t.get_text() for t in fig.findobj(Text)]
    return save(fig, path)

  monkeypatch.setattr(fairness_figures, "save_figure", record)
  fairness_figures.fairness_figures(root)
  assert "accuracy with bootstrap 97.5% CI (dashed: all examples)" in \
      drawn["accuracy_jaxmm_concat.png"]
  assert f"jaxmm: {N} examples, bootstrap 97.5% CIs (blue: fusion models)" in \
      drawn["headline_ci_jaxmm.png"]
  assert not any("95%" in t or "98%" in t for texts in drawn.values() for t in texts)
  body = report_runner.fairness_body(root, root)
  assert "Headline metrics with bootstrap 97.5% intervals" in body and "95%" not in body


def test_headline_baseline_model_is_chosen_on_validation(analysed):
  _, data, result = analysed
  accuracy = {m: correct_of(data, m).mean() for m in BASELINES}
  assert max(accuracy, key=accuracy.get) == "fusion_logreg"   # the test split's best
  picks = [p for p in result["headline_models"] if p["family"] != "jaxmm"]
  assert picks == [{"family": "concat/baselines/binary", "model": "image_logreg",
                    "selected_by": "best validation macro-F1 (0.800)"}]
  assert [p["model"] for p in result["headline_models"] if p["family"] == "jaxmm"] == \
      list(VARIANTS)
  assert any(line.startswith("  image_logreg (concat/baselines/binary): ") and
             line.endswith(", best validation macro-F1 (0.800)") for line in result["summary"])


def without_recorded_fields(path, keys=("split",), prefix="val_macro_f1/"):
  """Rewrites a baselines predictions.npz as written before the split and scores were kept."""
  old = {k: v for k, v in fairness_runner.read_npz(path).items()
         if k not in keys and not k.startswith(prefix)}
  write_npz_atomic(path, old)


def test_baselines_of_another_split_are_left_out(tmp_path, capsys):
  root = str(tmp_path / "pipeline")
  make_pipeline(root)
  run_dir = os.path.join(root, "concat")
  test_path = fairness_runner.predictions_path(run_dir, "test")
  shutil.copy(test_path, fairness_runner.predictions_path(run_dir, "validation"))
  config = fairness_config(split="validation", num_resamples=20)
  result = fairness_runner.run_fairness(config, run_dir)
  assert [f["name"] for f in result["families"]] == ["jaxmm"]
  lines = [line for line in capsys.readouterr().out.splitlines() if "left out" in line]
  assert lines == ["fairness: baseline families left out, their predictions are of another "
                   "split than 'validation' (--mode=baselines scores test only): "
                   "baselines/binary (test)"]
  # Files without a split were always test: still read for split="test", left out otherwise.
  without_recorded_fields(os.path.join(run_dir, "baselines", "binary", "predictions.npz"))
  result = fairness_runner.run_fairness(config, run_dir)
  assert [f["name"] for f in result["families"]] == ["jaxmm"]
  result = fairness_runner.run_fairness(fairness_config(num_resamples=20), run_dir)
  assert [f["name"] for f in result["families"]] == ["jaxmm", "baselines/binary"]
  os.remove(fairness_runner.predictions_path(run_dir, "validation"))
  with pytest.raises(FileNotFoundError, match=r"baselines of other splits: baselines/binary "
                                              r"\(test\)"):
    fairness_runner.run_fairness(config, run_dir)


def test_older_baselines_files_take_the_scores_of_baselines_json(tmp_path):
  root = str(tmp_path / "pipeline")
  make_pipeline(root)
  run_dir = os.path.join(root, "concat")
  without_recorded_fields(os.path.join(run_dir, "baselines", "binary", "predictions.npz"))
  config = fairness_config(num_resamples=20)
  result = fairness_runner.run_fairness(config, run_dir)   # no scores anywhere: no pick
  assert [p["family"] for p in result["headline_models"]] == ["jaxmm"]
  assert any(line.startswith("  baselines/binary: no headline model")
             for line in result["summary"])
  write_json(os.path.join(run_dir, "baselines", "baselines.json"), {"tasks": {"binary": {
      "rows": [{"model": m, "val_macro_f1": f} for m, f in VALIDATION_F1.items()]}}})
  result = fairness_runner.run_fairness(config, run_dir)
  assert result["headline_models"][-1]["model"] == "image_logreg"


def test_run_dir_and_errors(tmp_path):
  root = str(tmp_path / "pipeline")
  make_pipeline(root)
  run_dir = os.path.join(root, "concat")
  result = fairness_runner.run_fairness(fairness_config(min_support=20), run_dir)
  assert os.path.exists(os.path.join(run_dir, "analysis", "fairness", "slices.csv"))
  assert [f["name"] for f in result["families"]] == ["jaxmm", "baselines/binary"]
  assert min(r["support"] for r in result["slices"]) >= 20
  with pytest.raises(ValueError, match="Did you mean 'num_resamples'"):
    fairness_runner.run_fairness(fairness_config(num_resample=10), run_dir)
  # Baselines fit on other data: their labels match no label field of the predictions.
  path = os.path.join(run_dir, "baselines", "binary", "predictions.npz")
  baselines = fairness_runner.read_npz(path)
  baselines["label"] = 1 - baselines["label"]
  write_npz_atomic(path, baselines)
  with pytest.raises(ValueError, match="agree with none of"):
    fairness_runner.run_fairness(fairness_config(), run_dir)
  shutil.rmtree(os.path.join(run_dir, "baselines"))
  os.remove(fairness_runner.predictions_path(run_dir, "test"))
  with pytest.raises(FileNotFoundError, match="no predictions/test.npz"):
    fairness_runner.run_fairness(fairness_config(), run_dir)


def test_only_the_tasks_of_baselines_json_are_scored(tmp_path):
  """A task dropped from config.baselines.tasks kept its predictions.npz from the earlier
  baselines run, and fairness scored it as this run's; baselines.json lists the tasks run."""
  root = str(tmp_path / "pipeline")
  make_pipeline(root)
  run_dir = os.path.join(root, "concat")
  shutil.copytree(os.path.join(run_dir, "baselines", "binary"),
                  os.path.join(run_dir, "baselines", "multiclass"))
  families, _ = fairness_runner.baseline_families(run_dir, None, "test")
  assert [f.name for f in families] == ["baselines/binary", "baselines/multiclass"]
  write_json(os.path.join(run_dir, "baselines", "baselines.json"), {"tasks": {"binary": {}}})
  families, _ = fairness_runner.baseline_families(run_dir, None, "test")
  assert [f.name for f in families] == ["baselines/binary"]
  write_json(os.path.join(run_dir, "baselines", "baselines.json"), {"tasks": {}})
  assert fairness_runner.baseline_families(run_dir, None, "test")[0] == []


def test_a_table_that_comes_out_empty_leaves_no_file_of_an_earlier_run(tmp_path):
  """A rerun without explanation metrics kept the earlier run's explanation_slices.csv and
  explanation_tests.csv, and report.html showed them as this run's."""
  root = str(tmp_path / "pipeline")
  make_pipeline(root)
  out = os.path.join(root, "analysis", "fairness")
  fairness_runner.run_fairness(fairness_config(), root)
  assert os.path.exists(os.path.join(out, "explanation_slices.csv"))
  result = fairness_runner.run_fairness(fairness_config(explanation_metrics=()), root)
  assert result["explanation_slices"] == result["explanation_tests"] == []
  assert sorted(os.listdir(out)) == ["fairness.json", "headline_ci.csv", "paired_tests.csv",
                                     "slices.csv", "ztests.csv"]
  body = report_runner.fairness_body(root, root)
  assert "slices.csv" in body and "explanation_slices.csv" not in body
