"""launch/sweep.py: grid parsing and typing, point names, the t-interval summary against scipy,
--print, a failing point that does not stop the others, an eval sweep summarising eval_<split>.json,
and one real sweep on the smoke config."""
import csv
import io
import json
import math
import os
import shlex
import subprocess
import sys

import pytest
import scipy.stats

from jaxmm import sweep
from tests.conftest import CONFIG_DIR, REPO

SMOKE = os.path.join(CONFIG_DIR, "synthetic_derm.py") + ":smoke"

# Stands in for jaxmm.main in a point's process: records the call, prints, fails for late
# fusion, otherwise writes a results.json whose accuracy is 0.5 + 0.1 * seed.
FAKE_MAIN = """
import json, os, sys
args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
with open(os.environ["FAKE_SWEEP_CALLS"], "a") as f:
  f.write(os.path.basename(args["workdir"]) + "\\n")
print("fake run of", os.path.basename(args["workdir"]), os.environ.get("FAKE_SWEEP_PREFIX"))
if args["config.model.fusion"] == "late":
  print("late fusion exploded", file=sys.stderr)
  sys.exit(3)
os.makedirs(args["workdir"], exist_ok=True)
with open(os.path.join(args["workdir"], "results.json"), "w") as f:
  json.dump({"best_step": 3, "test": {"accuracy": 0.5 + 0.1 * int(args["config.seed"]),
                                     "macro_f1": 0.25, "roc_auc": None, "per_class": {}}}, f)
"""

# Stands in for jaxmm.main in train and eval: train writes results.json (accuracy
# 0.5 + 0.1 * seed), eval writes eval_test.json (accuracy 0.9 + 0.01 * seed) but fails for
# seed 1, and any other mode only prints.
FAKE_EVAL_MAIN = """
import json, os, sys
args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])
seed, workdir = int(args["config.seed"]), args["workdir"]
print("fake", args["mode"], "of", os.path.basename(workdir))
os.makedirs(workdir, exist_ok=True)
if args["mode"] == "train":
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"best_step": 3, "test": {"accuracy": 0.5 + 0.1 * seed, "macro_f1": 0.25}}, f)
elif args["mode"] == "eval":
  if seed == 1:
    sys.exit(3)
  with open(os.path.join(workdir, "eval_test.json"), "w") as f:
    json.dump({"accuracy": 0.9 + 0.01 * seed, "macro_f1": 0.5, "per_class": {}}, f)
"""


def read_csv(path) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_split_values_keeps_commas_inside_brackets_and_quotes():
  assert sweep.split_values("concat, late,film") == ["concat", "late", "film"]
  assert sweep.split_values("('image',),('image', 'meta')") == ["('image',)", "('image', 'meta')"]
  assert sweep.split_values("'a,b',c") == ["'a,b'", "c"]


def test_axis_values_are_typed_as_config_overrides_type_them(tmp_path):
  plan = sweep.make_plan(SMOKE, str(tmp_path), [
      "seed=0,1", "optimizer.learning_rate=1e-3,3e-3", "train.progress=true,False",
      "model.modalities=('meta','image'),('image','meta')", "model.image.width=8", ":model=film"])
  values = {axis.path: axis.values for axis in plan.axes}
  assert values == {"seed": (0, 1), "optimizer.learning_rate": (1e-3, 3e-3),
                    "train.progress": (True, False),
                    "model.modalities": (("meta", "image"), ("image", "meta")),
                    "model.image.width": (8,), ":model": ("film",)}
  assert len(plan.points) == 16
  assert plan.points[1].values == {"seed": 0, "optimizer.learning_rate": 1e-3,
                                   "train.progress": True, "model.modalities": ("image", "meta"),
                                   "model.image.width": 8, ":model": "film"}


@pytest.mark.parametrize("grid,sets,message", [
    (["model.fusoin=concat,late"], [], ("config.model has no key 'fusoin'; valid keys: "
                                        "['dtype', 'fusion'")),
    (["model.fusoin=concat,late"], [], "Did you mean 'fusion'?"),
    (["sed=0,1"], [], "Did you mean 'seed'?"),
    (["seed=0,one"], [], "--config.seed=one: not a valid int"),
    (["train.progress=maybe"], [], "--config.train.progress=maybe: not a valid bool"),
    (["model=concat"], [], "--config.model is a section"),
    (["seed=0,0"], [], "values ['0'] are given more than once"),
    (["optimizer.learning_rate=1e-3,0.001,0.01"], [],
     "--grid axis 'optimizer.learning_rate': values '1e-3' and '0.001' are the same value, "
     "0.001"),
    (["seed=1,01"], [], "values '1' and '01' are the same value, 1"),
    (["train.progress=true,True"], [], "values 'true' and 'True' are the same value, True"),
    (["model.modalities=('image',),(\"image\",)"], [],
     "values \"('image',)\" and '(\"image\",)' are the same value"),
    (["seed"], [], "expected PATH=VALUE"),
    ([":modle=image"], [], "unknown config argument 'modle'"),
    ([":model=imgae"], [], "unknown model variant 'imgae'"),
    (["seed=0"], ["train.num_step=1"], "Did you mean 'num_steps'?"),
    (["seed=0"], ["seed=1"], "['seed'] set more than once"),
    (["model.fusion=concat,lat", "seed=0,1"], [],
     "grid point model.fusion=lat,seed=0: unknown fusion 'lat'; valid fusions: "),
    (["optimizer.name=adam,adm"], [], "grid point optimizer.name=adm: unknown optimizer 'adm'"),
    (["seed=0"], ["train.class_weights=inverse"],
     "grid point seed=0: config.train.class_weights='inverse'; valid values: [None, 'balanced']"),
    ([":model=image,concat"], ["model.dtype=float16"], "unknown dtype 'float16'"),
    (["data.label_key=label,lable"], [], "grid point data.label_key=lable: config.data.label_key"
                                         " names 'lable', which is not a field of synthetic_derm"),
    (["data.name=synthetic_derm,synthetic_dem"], [], "unknown dataset 'synthetic_dem'"),
    (["data.builder_config=small,tiny"], [], "unknown config 'tiny' of synthetic_derm"),
])
def test_bad_axis_or_value_fails_before_anything_runs(tmp_path, grid, sets, message):
  with pytest.raises(ValueError) as error:
    sweep.make_plan(SMOKE, str(tmp_path / "sweep"), grid, sets)
  assert message in str(error.value)


def test_the_command_line_reports_a_bad_axis_without_creating_anything(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  code = sweep.main([f"--config={SMOKE}", f"--workdir={workdir}", "--grid", "model.fusoin=late",
                     "seed=0,1"])
  assert code == 2
  assert "Did you mean 'fusion'?" in capsys.readouterr().err
  assert not workdir.exists()


def test_a_metric_split_that_training_does_not_write_fails_first(tmp_path):
  with pytest.raises(ValueError, match=r"no split 'tset'.*Did you mean 'test'\?"):
    sweep.make_plan(SMOKE, str(tmp_path), ["seed=0"], metrics=["tset.accuracy"])


@pytest.mark.parametrize("metric,message", [
    ("validation.accuracy", "--mode=eval writes no eval_validation.json; it evaluates "
                            "config.eval.splits: ['test']"),
    ("best_step", "give SPLIT.NAME, e.g. 'test.accuracy'")])
def test_an_eval_metric_must_name_a_split_that_eval_writes(tmp_path, metric, message):
  """The smoke config trains with final_eval_splits (validation, test) but evaluates test."""
  sweep.make_plan(SMOKE, str(tmp_path), ["seed=0"], metrics=[metric])  # fine for train
  with pytest.raises(ValueError) as error:
    sweep.make_plan(SMOKE, str(tmp_path), ["seed=0"], metrics=[metric], mode="eval")
  assert message in str(error.value)


def test_point_names_are_filesystem_safe_and_distinct(tmp_path):
  assert sweep.point_name({"model.fusion": "late", "seed": "1"}) == "model.fusion=late,seed=1"
  assert sweep.point_name({":model": "image"}) == "model=image"
  assert sweep.point_name({"model.modalities": "('image', 'meta')"}) == (
      "model.modalities=__image_,__meta__")
  long_a = sweep.point_name({"model.fusion": "x" * 300 + "a"})
  long_b = sweep.point_name({"model.fusion": "x" * 300 + "b"})
  assert len(long_a) == 150 and long_a != long_b
  with pytest.raises(ValueError, match="would share the folder 'model.fusion=a_b'"):
    sweep.make_plan(SMOKE, str(tmp_path), ["model.fusion=a/b,a_b"])


def write_results(workdir, name, test):
  os.makedirs(workdir / name)
  (workdir / name / "results.json").write_text(json.dumps({"best_step": 3, "test": test}))


def by_hand(values, confidence):
  """Mean, sample sd and the t interval, written out."""
  n = len(values)
  mean = sum(values) / n
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  half = scipy.stats.t.ppf(1 - (1 - confidence) / 2, df=n - 1) * sd / math.sqrt(n)
  return mean, sd, mean - half, mean + half


def test_summary_means_and_t_intervals_match_scipy_by_hand(tmp_path):
  workdir = tmp_path / "sweep"
  plan = sweep.make_plan(SMOKE, str(workdir), ["model.fusion=concat,late,film", "seed=0,1,2"])
  concat = [0.61, 0.72, 0.68]
  for seed, accuracy in enumerate(concat):  # seed 1's AUC is NaN, written as null
    write_results(workdir, f"model.fusion=concat,seed={seed}",
                  {"accuracy": accuracy, "roc_auc": None if seed == 1 else 0.8 + 0.05 * seed})
  for seed, accuracy in [(0, 0.5), (2, 0.9)]:  # late's seed 1 has no results
    write_results(workdir, f"model.fusion=late,seed={seed}", {"accuracy": accuracy,
                                                               "roc_auc": 0.7})
  write_results(workdir, "model.fusion=film,seed=0", {"accuracy": 0.4, "roc_auc": 0.6})
  options = sweep.Options(metrics=("test.accuracy", "test.roc_auc"), confidence=0.9)
  out = io.StringIO()
  rows = sweep.summarize(plan, options, out=out)

  assert [(r["model.fusion"], r["metric"], r["n"]) for r in rows] == [
      ("concat", "test.accuracy", 3), ("concat", "test.roc_auc", 2),
      ("late", "test.accuracy", 2), ("late", "test.roc_auc", 2),
      ("film", "test.accuracy", 1), ("film", "test.roc_auc", 1)]
  for row, values in [(rows[0], concat), (rows[1], [0.8, 0.9]), (rows[2], [0.5, 0.9])]:
    mean, sd, low, high = by_hand(values, 0.9)
    assert row["mean"] == pytest.approx(mean, abs=1e-12)
    assert row["std"] == pytest.approx(sd, abs=1e-12)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-12)
  assert rows[4]["mean"] == 0.4 and math.isnan(rows[4]["std"]) and math.isnan(rows[4]["ci_low"])

  written = read_csv(workdir / "sweep_summary.csv")
  assert float(written[0]["ci_high"]) == pytest.approx(rows[0]["ci_high"], abs=1e-12)
  assert written[4]["ci_low"] == ""  # n = 1: no interval
  summary = json.loads((workdir / "sweep_summary.json").read_text())
  assert summary["points_with_results"] == 6 and summary["confidence"] == 0.9
  assert summary["rows"][4]["ci_low"] is None
  cells = ["{:.3f} ± {:.3f} [{:.3f}, {:.3f}]".format(*by_hand(v, 0.9)) for v in (concat, [.8, .9])]
  markdown = (workdir / "sweep_summary.md").read_text().splitlines()
  assert markdown[2] == "| model.fusion | n | test.accuracy | test.roc_auc |"
  assert markdown[4] == f"| concat | 3 | {cells[0]} | {cells[1]} (n=2) |"
  assert markdown[6] == "| film | 1 | 0.400 [-] | 0.600 [-] |"
  assert "film          1  0.400 [-]" in out.getvalue()
  points = read_csv(workdir / "sweep_points.csv")
  assert [p["status"] for p in points] == ["done"] * 3 + ["done", "missing", "done"] + [
      "done", "missing", "missing"]
  assert points[3]["test.accuracy"] == "0.5" and points[4]["test.accuracy"] == ""



@pytest.mark.parametrize("confidence, level", [(0.975, "97.5%"), (0.995, "99.5%"),
                                               (0.95, "95%"), (0.8, "80%")])
def test_the_title_names_the_confidence_level_unrounded(tmp_path, confidence, level):
  """0.975 was titled 98% and 0.995 100% (:.0%) above intervals of the requested level."""
  workdir = tmp_path / "sweep"
  plan = sweep.make_plan(SMOKE, str(workdir), ["seed=0,1,2"])
  for seed, accuracy in enumerate([0.6, 0.7, 0.65]):
    write_results(workdir, f"seed={seed}", {"accuracy": accuracy})
  out = io.StringIO()
  rows = sweep.summarize(plan, sweep.Options(metrics=("test.accuracy",),
                                             confidence=confidence), out=out)
  assert (rows[0]["ci_low"], rows[0]["ci_high"]) == pytest.approx(
      by_hand([0.6, 0.7, 0.65], confidence)[2:], abs=1e-12)
  title = f"mean ± sd [{level} t interval] over seed; n = runs with results."
  assert out.getvalue().splitlines()[1].endswith(title)
  assert title in (workdir / "sweep_summary.md").read_text().splitlines()[0]

def test_the_printed_table_shows_axis_values_as_written(tmp_path):
  """The stdout table formats floats with 3 decimals: its axis cells are the --grid texts
  (1e-4 printed 0.000 before), as in the markdown; the metric cells keep their format."""
  workdir = tmp_path / "sweep"
  plan = sweep.make_plan(SMOKE, str(workdir), ["optimizer.learning_rate=1e-4,3e-4,1e-3",
                                               "seed=0,1"])
  for index, point in enumerate(plan.points):
    write_results(workdir, point.name, {"accuracy": 0.5 + 0.05 * index})
  out = io.StringIO()
  rows = sweep.summarize(plan, sweep.Options(metrics=("test.accuracy",)), out=out)
  assert [row["optimizer.learning_rate"] for row in rows] == [1e-4, 3e-4, 1e-3]
  table = out.getvalue().splitlines()[2:7]
  assert [line.split()[:3] for line in table] == [
      ["optimizer.learning_rate", "n", "test.accuracy"], ["-" * 23, "-", "-" * 28],
      ["1e-4", "2", "0.525"], ["3e-4", "2", "0.625"], ["1e-3", "2", "0.725"]]
  markdown = (workdir / "sweep_summary.md").read_text().splitlines()
  assert [line.split(" | ")[0] for line in markdown[4:]] == ["| 1e-4", "| 3e-4", "| 1e-3"]


def test_a_failed_point_contributes_no_results_even_with_an_old_results_file(tmp_path):
  """A point that failed in this sweep has no results, whatever its folder holds."""
  workdir = tmp_path / "sweep"
  plan = sweep.make_plan(SMOKE, str(workdir), ["seed=0,1,2"])
  for seed in range(3):
    write_results(workdir, f"seed={seed}", {"accuracy": 0.5 + 0.1 * seed})
  statuses = {"seed=0": {"status": "done", "returncode": 0},
              "seed=1": {"status": "failed", "returncode": 3},
              "seed=2": {"status": "skipped"}}
  out = io.StringIO()
  rows = sweep.summarize(plan, sweep.Options(metrics=("test.accuracy",)), statuses, out=out)
  assert (rows[0]["n"], rows[0]["mean"]) == (2, pytest.approx(0.6))
  assert "2 of 3 points have results" in out.getvalue()
  points = read_csv(workdir / "sweep_points.csv")
  assert [(p["status"], p["test.accuracy"]) for p in points] == [
      ("done", "0.5"), ("failed", ""), ("skipped", "0.7")]


def test_an_eval_sweep_summarises_eval_results_not_training_ones(tmp_path, monkeypatch):
  """--mode=eval reads each point's eval_test.json (not the training run's results.json), a
  point whose eval failed counts for nothing, and a bare --summarize reads eval's results
  again (the mode sweep.json records)."""
  (tmp_path / "fake_eval_main.py").write_text(FAKE_EVAL_MAIN)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  workdir = tmp_path / "sweep"
  argv = [f"--config={SMOKE}", f"--workdir={workdir}", "--grid", "seed=0,1,2",
          "--module=fake_eval_main", "--metric", "test.accuracy", "test.macro_f1"]
  assert sweep.main(argv, out=io.StringIO()) == 0
  # An earlier eval of seed=1 left its file: this run's failure of that point must win, in the
  # run's own summary and in a later --summarize (sweep_status.json).
  (workdir / "seed=1" / "eval_test.json").write_text(json.dumps({"accuracy": 0.1,
                                                                 "macro_f1": 0.1}))
  out = io.StringIO()
  assert sweep.main([*argv, "--mode=eval"], out=out) == 1
  text = out.getvalue()
  assert "1 of 3 points failed: seed=1" in text and "2 of 3 points have results" in text
  assert f"Sweep {workdir} ({SMOKE}, --mode=eval): mean" in text
  summary = json.loads((workdir / "sweep_summary.json").read_text())
  assert summary["mode"] == "eval" and summary["points_with_results"] == 2
  assert [(r["metric"], r["n"], r["mean"]) for r in summary["rows"]] == [
      ("test.accuracy", 2, pytest.approx(0.91)), ("test.macro_f1", 2, pytest.approx(0.5))]
  points = read_csv(workdir / "sweep_points.csv")
  assert [(p["status"], p["test.accuracy"]) for p in points] == [
      ("done", "0.9"), ("failed", ""), ("done", "0.92")]

  assert sweep.main([f"--workdir={workdir}", "--summarize", "--metric=test.accuracy"],
                    out=io.StringIO()) == 0
  rows = json.loads((workdir / "sweep_summary.json").read_text())["rows"]
  assert (rows[0]["n"], rows[0]["mean"]) == (2, pytest.approx(0.91))
  assert sweep.main([f"--workdir={workdir}", "--summarize", "--mode=train",
                     "--metric=test.accuracy"], out=io.StringIO()) == 0  # asked for
  rows = json.loads((workdir / "sweep_summary.json").read_text())["rows"]
  assert (rows[0]["n"], rows[0]["mean"]) == (3, pytest.approx(0.6))


def test_a_mode_without_metrics_runs_its_points_but_is_not_summarised(tmp_path, monkeypatch,
                                                                     capsys):
  (tmp_path / "fake_eval_main.py").write_text(FAKE_EVAL_MAIN)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  workdir = tmp_path / "sweep"
  write_results(workdir, "seed=0", {"accuracy": 0.5})  # an earlier training run's
  argv = [f"--config={SMOKE}", f"--workdir={workdir}", "--grid", "seed=0,1",
          "--module=fake_eval_main", "--mode=saliency"]
  out = io.StringIO()
  assert sweep.main(argv, out=out) == 0
  assert "[2/2 seed=1] fake saliency of seed=1" in out.getvalue()
  assert ("no summary: --mode=saliency writes no metrics the sweep reads; it summarises "
          "--mode=train (results.json) and --mode=eval (eval_<split>.json)") in out.getvalue()
  assert not (workdir / "sweep_summary.json").exists()
  assert sweep.main([f"--workdir={workdir}", "--summarize"]) == 2
  assert "error: cannot summarise: --mode=saliency writes" in capsys.readouterr().err
  assert not (workdir / "sweep_summary.json").exists()


def test_print_writes_one_launcher_command_per_point(tmp_path, capsys):
  """launch/*.sh take CONFIG WORKDIR [flags]; nothing runs."""
  workdir = tmp_path / "sweep"
  code = sweep.main([f"--config={SMOKE}", f"--workdir={workdir}", "--grid",
                     "model.fusion=concat,late", "seed=0,1", "--set", "train.num_steps=1",
                     "--print", "--launcher=sbatch --nodes=2 launch/slurm.sh"])
  lines = capsys.readouterr().out.splitlines()
  assert code == 0 and len(lines) == 4
  assert shlex.split(lines[1]) == [
      "sbatch", "--nodes=2", "launch/slurm.sh", SMOKE, f"{workdir}/model.fusion=concat,seed=1",
      "--mode=train", "--config.train.num_steps=1", "--config.model.fusion=concat",
      "--config.seed=1"]
  assert lines[3].endswith("--config.model.fusion=late --config.seed=1")
  assert sorted(os.listdir(workdir)) == ["sweep.json", "sweep_status.json"]


def test_print_without_launcher_gives_python_commands_after_the_prefix(tmp_path, capsys):
  sweep.main([f"--config={SMOKE}", f"--workdir={tmp_path}", "--grid", "seed=0,1", "--print",
              "--prefix=srun -n1", "--mode=eval"])
  assert [shlex.split(line) for line in capsys.readouterr().out.splitlines()] == [
      ["srun", "-n1", "python", "-m", "jaxmm.main", f"--config={SMOKE}",
       f"--workdir={tmp_path}/seed={seed}", "--mode=eval", f"--config.seed={seed}"]
      for seed in (0, 1)]


def test_print_puts_argument_axes_into_the_config_argument(tmp_path, capsys):
  sweep.main([f"--config={SMOKE}", f"--workdir={tmp_path}", "--grid", ":model=image,meta",
              "--print", "--python=python3"])
  lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
  assert [line[3] for line in lines] == [f"--config={SMOKE},model=image",
                                         f"--config={SMOKE},model=meta"]
  assert lines[0][4] == f"--workdir={tmp_path}/model=image" and lines[0][0] == "python3"


def test_a_failing_point_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
  (tmp_path / "fake_sweep_main.py").write_text(FAKE_MAIN)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  calls = tmp_path / "calls.txt"
  monkeypatch.setenv("FAKE_SWEEP_CALLS", str(calls))
  workdir = tmp_path / "sweep"
  argv = [f"--config={SMOKE}", f"--workdir={workdir}", "--grid", "model.fusion=late,concat",
          "seed=0,1", "--module=fake_sweep_main", "--prefix=env FAKE_SWEEP_PREFIX=seen"]
  assert sweep.main(argv) == 1
  out = capsys.readouterr().out
  assert "[4/4 model.fusion=concat,seed=1] fake run of model.fusion=concat,seed=1 seen" in out
  assert "[1/4 model.fusion=late,seed=0] late fusion exploded" in out
  log = workdir / "logs" / "model.fusion=late,seed=0.log"
  assert f"FAILED model.fusion=late,seed=0: exit status 3, log {log}" in out
  assert "2 of 4 points failed: model.fusion=late,seed=0, model.fusion=late,seed=1" in out
  assert log.read_text() == "fake run of model.fusion=late,seed=0 seen\nlate fusion exploded\n"
  assert calls.read_text().split() == [point.name for point in sweep.make_plan(
      SMOKE, str(workdir), argv[3:5]).points]
  points = read_csv(workdir / "sweep_points.csv")
  assert [(p["status"], p["returncode"]) for p in points] == [
      ("failed", "3"), ("failed", "3"), ("done", "0"), ("done", "0")]
  assert [p["test.accuracy"] for p in points] == ["", "", "0.5", "0.6"]

  calls.unlink()  # rerun: the finished points are skipped, the failed ones tried again
  assert sweep.main(argv) == 1
  assert calls.read_text().split() == ["model.fusion=late,seed=0", "model.fusion=late,seed=1"]
  assert "[3/4 model.fusion=concat,seed=0] skipped: results.json exists" in capsys.readouterr().out

  # --summarize reads the grid back from sweep.json and runs nothing
  assert sweep.main([f"--workdir={workdir}", "--summarize", "--metric=test.accuracy"]) == 0
  assert calls.read_text().split() == ["model.fusion=late,seed=0", "model.fusion=late,seed=1"]
  summary = json.loads((workdir / "sweep_summary.json").read_text())["rows"]
  assert [(r["model.fusion"], r["n"]) for r in summary] == [("late", 0), ("concat", 2)]
  assert summary[1]["mean"] == pytest.approx(0.55)

  # --print for a cluster: only the points not done; once the cluster has run them, their
  # results count (the local run's "failed" records no longer hide them)
  capsys.readouterr()
  assert sweep.main([*argv, "--print"]) == 0
  printed = capsys.readouterr()
  assert [[a for a in shlex.split(line) if a.startswith("--workdir=")]
          for line in printed.out.splitlines()] == [
      [f"--workdir={workdir}/model.fusion=late,seed={seed}"] for seed in (0, 1)]
  assert "skipped model.fusion=concat,seed=0: results.json exists" in printed.err
  for seed in (0, 1):
    (workdir / f"model.fusion=late,seed={seed}").mkdir()
    (workdir / f"model.fusion=late,seed={seed}" / "results.json").write_text(json.dumps(
        {"best_step": 3, "test": {"accuracy": 0.7 + 0.1 * seed}}))
  assert sweep.main([f"--workdir={workdir}", "--summarize", "--metric=test.accuracy"]) == 0
  summary = json.loads((workdir / "sweep_summary.json").read_text())["rows"]
  assert [(r["model.fusion"], r["n"]) for r in summary] == [("late", 2), ("concat", 2)]


def test_real_sweep_on_the_smoke_config_then_rerun_skips(data_dir, tmp_path, monkeypatch):
  """One real sweep through launch/sweep.py: late fusion (not the config's default) x seeds
  0, 1 on the smoke data; each point's config took the overrides; rerunning runs nothing."""
  # Both points compile the same programs: a compilation cache halves the test's time.
  for name, value in [("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache")),
                      ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                      ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")]:
    monkeypatch.setenv(name, value)
  workdir = tmp_path / "sweep"
  argv = [f"--config={SMOKE}", f"--workdir={workdir}", "--grid", "model.fusion=late",
          "seed=0,1", "--set", "train.progress=False"]  # data: $JAXMM_DATA_DIR = data_dir
  done = subprocess.run([sys.executable, os.path.join(REPO, "launch", "sweep.py"), *argv],
                        cwd=tmp_path, capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  tests = []
  for seed in (0, 1):
    point = workdir / f"model.fusion=late,seed={seed}"
    config = json.loads((point / "config.json").read_text())
    assert (config["model"]["fusion"], config["seed"]) == ("late", seed)
    tests.append(json.loads((point / "results.json").read_text())["test"])
  assert f"[2/2 model.fusion=late,seed=1] {point} best step" in done.stdout
  row = json.loads((workdir / "sweep_summary.json").read_text())["rows"][0]
  assert (row["model.fusion"], row["metric"], row["n"]) == ("late", "test.accuracy", 2)
  mean, _, low, high = by_hand([t["accuracy"] for t in tests], 0.95)
  assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((mean, low, high))

  stamps = [os.path.getmtime(p) for p in workdir.glob("*/results.json")]
  out = io.StringIO()
  assert sweep.main(argv, out=out) == 0
  assert out.getvalue().count("skipped: results.json exists") == 2
  assert [os.path.getmtime(p) for p in workdir.glob("*/results.json")] == stamps
