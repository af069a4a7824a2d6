"""--mode=evaluate_explanations resumes (evaluation.runner, "Resuming"): a unit whose record is
gone is recomputed alone; a real process SIGKILLed mid-way and rerun with the same command
ends with the uninterrupted run's files; changed settings recompute what they touch and
dropped methods leave no files behind.

One trained workdir for the module: synthetic_derm's image-only smoke run with a small CNN and
the evaluation cut to a few examples, so that its evaluation takes seconds. The evaluation
subprocesses share a persistent compilation cache, so the killed and the resumed run reuse
the uninterrupted run's compiled programs.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmm.data.atomic import write_text_atomic
from jaxmm.evaluation import runner
from jaxmm.train import config_lib, loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = '''"""synthetic_derm's image-only smoke run (small CNN), evaluation cut to seconds."""
from jaxmm.train import config_lib


def get_config(arg=None):
  config = config_lib.load_config_file({spec!r})
  config.data.data_dir = {data_dir!r}
  config.model.image.encoder = "small_cnn"
  config.train.progress = False
  config.train.final_eval_splits = ()
  evaluation = config.evaluation
  evaluation.saliency_methods = ("gradcam", "hirescam")
  evaluation.bootstrap_resamples = 20
  evaluation.ifa.update({{"methods": ("gradcam", "hirescam"), "batch_size": 16,
                         "max_examples": 16}})
  evaluation.faithfulness.update({{"num_examples": 2, "steps": 2, "chunk_size": 3}})
  evaluation.sanity.update({{"num_examples": 1, "methods": ("gradcam",)}})
  return config
'''
# stage -> (the runner function that computes one of its units, position of its method arg)
STAGE_FUNCTIONS = {"roi_agreement": ("roi_method", 1), "ifa": ("ifa_unit", 2),
                   "faithfulness": ("faithfulness_row", 0), "sanity": ("sanity_method_rows", 1)}


def evaluate_command(config_path: str, workdir) -> list:
  return [sys.executable, "-m", "jaxmm.main", f"--config={config_path}", f"--workdir={workdir}",
          "--mode=evaluate_explanations"]


def final_table(stdout: str) -> str:
  """The summary the evaluation prints last (from its first line on), without the line the
  mode's workflow prints after it (where the figures went: only the subprocess draws them)."""
  table = stdout[stdout.index("Explanation evaluation ("):]
  return table.split("\nevaluation figures: ")[0].rstrip("\n")


def analysis_files(workdir) -> dict:
  """{path under analysis/: bytes}, without the temporary files a killed write leaves."""
  root = os.path.join(workdir, "analysis")
  files = {}
  for folder, _, names in os.walk(root):
    for name in names:
      if ".tmp-" not in name:
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
          files[os.path.relpath(path, root)] = f.read()
  return files


def assert_same_files(expected, actual) -> None:
  a, b = analysis_files(expected), analysis_files(actual)
  assert sorted(a) == sorted(b)
  assert [k for k in a if a[k] != b[k]] == []


def unit_names(workdir) -> list:
  folder = os.path.join(workdir, "analysis", runner.UNITS_DIR)
  return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json"))


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory):
  """The trained workdir ("trained", no evaluation yet) and a copy evaluated without
  interruption by the real command ("reference", its stdout)."""
  root = tmp_path_factory.mktemp("resume")
  config_path = str(root / "resume_config.py")
  spec = os.path.join(REPO, "configs", "synthetic_derm.py") + ":model=image,smoke"
  (root / "resume_config.py").write_text(CONFIG.format(spec=spec, data_dir=data_dir))
  config = config_lib.load_config_file(config_path)
  trained = root / "trained"
  loop.train_and_evaluate(config, str(trained))
  env = dict(os.environ, JAXMM_DATA_DIR=data_dir,
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  reference = root / "reference"
  shutil.copytree(trained, reference)
  done = subprocess.run(evaluate_command(config_path, reference), env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return {"config_path": config_path, "trained": trained, "reference": reference, "env": env,
          "stdout": done.stdout}


def count_stage_calls(monkeypatch) -> list:
  """(stage, method) of every unit computed from now on (the stage functions, wrapped)."""
  calls = []

  def counted(stage, fn, position):
    def wrapper(*args, **kwargs):
      calls.append((stage, args[position]))
      return fn(*args, **kwargs)
    return wrapper

  for stage, (name, position) in STAGE_FUNCTIONS.items():
    monkeypatch.setattr(runner, name, counted(stage, getattr(runner, name), position))
  return calls


def test_the_uninterrupted_run_records_a_unit_per_stage_and_method(setup):
  assert unit_names(setup["reference"]) == [
      "faithfulness.gradcam", "faithfulness.hirescam", "faithfulness.random", "ifa.gradcam",
      "ifa.hirescam", "roi_agreement.gradcam", "roi_agreement.hirescam", "sanity.gradcam"]
  analysis = setup["reference"] / "analysis"
  record = json.loads((analysis / runner.UNITS_DIR / "ifa.hirescam.json").read_text())
  assert record["settings"]["evaluation"]["ifa"]["fractions"] == [0.05, 0.1, 0.2, 0.25]
  assert record["settings"]["saliency_manifest"]["methods"] == ["gradcam", "hirescam"]
  assert all((analysis / p).exists() for p in record["outputs"])
  assert "ifa/hirescam/importance.npz" in record["outputs"]


def test_a_unit_without_its_record_is_recomputed_alone(setup, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(setup["reference"], workdir)
  (workdir / "analysis" / runner.UNITS_DIR / "faithfulness.hirescam.json").unlink()
  calls = count_stage_calls(monkeypatch)
  runner.run_evaluation(config_lib.load_config_file(setup["config_path"]), str(workdir))
  assert calls == [("faithfulness", "hirescam")]
  assert_same_files(setup["reference"], workdir)
  assert final_table(capsys.readouterr().out) == final_table(setup["stdout"])


def test_a_sigkilled_evaluation_resumes_to_the_uninterrupted_files(setup, tmp_path):
  workdir = tmp_path / "killed"
  shutil.copytree(setup["trained"], workdir)
  command = evaluate_command(setup["config_path"], workdir)
  units = workdir / "analysis" / runner.UNITS_DIR
  process = subprocess.Popen(command, env=setup["env"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 300
  try:  # killed once the first IFA unit is recorded: mid-way through the IFA stage or after
    while not (units.is_dir() and list(units.glob("ifa.*.json"))):
      assert process.poll() is None, f"ended before an IFA unit was recorded:\n" \
                                     f"{process.stdout.read()[-3000:]}"
      assert time.monotonic() < deadline, "no IFA unit recorded within 300 s"
      time.sleep(0.02)
  finally:
    process.kill()
    process.communicate()
  done_before = unit_names(workdir)
  assert not (workdir / "analysis" / "explanation_evaluation.json").exists()
  assert 0 < len(done_before) < len(unit_names(setup["reference"]))
  done = subprocess.run(command, env=setup["env"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  reused = re.findall(rf": reused \({runner.UNITS_DIR}/(.+)\.json\)", done.stdout)
  assert sorted(reused) == done_before  # the rest was computed by the rerun
  assert_same_files(setup["reference"], workdir)
  assert final_table(done.stdout) == final_table(setup["stdout"])
  # one row per example with an ROI, none twice
  with np.load(next((workdir / "analysis" / "saliency" / "evaluation_test").glob("*.npz"))) as s:
    with_roi = int(np.asarray(s["roi_mask"]).reshape(len(s["index"]), -1).any(1).sum())
  table = (workdir / "analysis" / "roi_agreement" / "gradcam_per_image.csv").read_text()
  indices = [line.split(",")[0] for line in table.splitlines()[1:]]
  assert len(indices) == len(set(indices)) == with_roi


def test_changed_settings_recompute_what_they_touch(setup, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "changed"
  shutil.copytree(setup["reference"], workdir)
  config = config_lib.load_config_file(setup["config_path"])
  config.evaluation.bootstrap_resamples = 10
  config.evaluation.ifa.methods = ("gradcam",)
  calls = count_stage_calls(monkeypatch)
  summary = runner.run_evaluation(config, str(workdir))
  out = capsys.readouterr().out
  # the ROI units read bootstrap_resamples; gradcam's IFA unit is kept as it was, hirescam's
  # is removed with its files
  assert calls == [("roi_agreement", "gradcam"), ("roi_agreement", "hirescam")]
  assert "settings changed: evaluation.bootstrap_resamples" in out
  assert "removed unit ifa.hirescam" in out
  assert not (workdir / "analysis" / "ifa" / "hirescam").exists()
  assert "ifa.hirescam" not in unit_names(workdir) and list(summary["ifa"]) == ["gradcam"]
  record = json.loads((workdir / "analysis" / runner.UNITS_DIR /
                       "roi_agreement.gradcam.json").read_text())
  assert record["settings"]["evaluation"]["bootstrap_resamples"] == 10
  before, after = analysis_files(setup["reference"]), analysis_files(workdir)
  for name in ("faithfulness.csv", "sanity.csv", "roi_agreement/gradcam_per_image.csv",
               "ifa/gradcam/importance.npz", "evaluation_units/ifa.gradcam.json"):
    assert before[name] == after[name], name
  assert before["roi_agreement/summary.csv"] != after["roi_agreement/summary.csv"]


def test_unit_store_round_trips_and_names_what_changed(tmp_path, capsys):
  """The record machinery alone: NaN and arrays read back exactly, a reused unit is not
  computed, a changed key or a missing file recomputes, an unused unit is removed."""
  analysis = str(tmp_path)
  calls = []

  def compute():
    calls.append(1)
    path = os.path.join(analysis, "stage", "table.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomic(path, "a\n1\n")
    return {"rows": [{"p": float("nan"), "n": np.int64(3)}]}, {"x": np.arange(3.0)}, [path]

  def run(store, settings):
    return store.run("stage.m", settings, compute, "stage, m")

  store = runner.UnitStore(analysis, {"split": "test"})
  first = run(store, {"evaluation": {"k": 1}})
  assert np.isnan(first["rows"][0]["p"]) and first["rows"][0]["n"] == 3
  np.testing.assert_array_equal(first["arrays"]["x"], np.arange(3.0))
  again = run(runner.UnitStore(analysis, {"split": "test"}), {"evaluation": {"k": 1}})
  assert len(calls) == 1 and again["rows"][0]["n"] == 3
  run(runner.UnitStore(analysis, {"split": "test"}), {"evaluation": {"k": 2}})
  assert len(calls) == 2 and "settings changed: evaluation.k" in capsys.readouterr().out
  os.remove(os.path.join(analysis, "stage", "table.csv"))
  run(runner.UnitStore(analysis, {"split": "test"}), {"evaluation": {"k": 2}})
  assert len(calls) == 3 and "files missing: stage/table.csv" in capsys.readouterr().out
  assert runner.UnitStore(analysis, {"split": "test"}).remove_unused() == ["stage.m"]
  assert os.listdir(analysis) == [runner.UNITS_DIR]
  assert os.listdir(os.path.join(analysis, runner.UNITS_DIR)) == []
