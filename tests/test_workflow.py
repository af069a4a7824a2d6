"""The main job: every variant trained, a comparison table and fusion margins written, then
every analysis step; run as the README runs it, with the network blocked."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxmm import workflow
from tests.conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fusion_margins_against_each_contained_modality():
  rows = [{"model": "image", "modalities": "image", "macro_f1": 0.5},
          {"model": "meta", "modalities": "meta", "macro_f1": 0.3},
          {"model": "text", "modalities": "text", "macro_f1": 0.9},
          {"model": "concat", "modalities": "image+meta", "macro_f1": 0.7}]
  margins = workflow.fusion_margins(rows, "macro_f1")
  assert margins.keys() == {"concat"}
  assert margins["concat"] == pytest.approx({"vs_image": 0.2, "vs_meta": 0.4})
  # Against the best model of a modality, whichever is listed last (the last one was kept);
  # an undefined metric is never the best.
  more = rows[:1] + [{"model": "image_small", "modalities": "image", "macro_f1": 0.4},
                     {"model": "meta_nan", "modalities": "meta", "macro_f1": float("nan")},
                     {"model": "meta_none", "modalities": "meta", "macro_f1": None}] + rows[1:]
  assert workflow.fusion_margins(more, "macro_f1")["concat"] == pytest.approx(
      {"vs_image": 0.2, "vs_meta": 0.4})


@pytest.mark.parametrize("key,value,message", [
    ("baselines", {"checkpoint": "bset"}, "config.baselines.checkpoint"),
    ("shap", {"num_examples": 0}, "config.shap.num_examples must be >= 1"),
    ("fairness", {"confidenc": 0.9}, "unknown config.fairness key 'confidenc'"),
])
def test_main_job_checks_every_analysis_section_before_training(tmp_path, data_dir, key, value,
                                                                message):
  # A bad later-stage setting used to fail only after every variant had trained.
  from tests.conftest import load_smoke_config
  config = load_smoke_config(data_dir, "synthetic_derm")
  config[key].update(value)
  with pytest.raises(ValueError, match=message):
    workflow.run_pipeline(config, str(tmp_path / "job"))
  assert not (tmp_path / "job").exists()


def test_format_table_aligns_columns():
  table = workflow.format_table([{"model": "image", "macro_f1": 0.51234},
                                 {"model": "concat", "macro_f1": 0.7}])
  lines = table.splitlines()
  assert lines[0].split() == ["model", "macro_f1"]
  assert lines[2].split() == ["image", "0.512"] and lines[3].split() == ["concat", "0.700"]
  assert len({line.index(line.split()[1]) for line in lines[2:]}) == 1


# Loaded first by the subprocess (sitecustomize): any attempt to reach another host over the
# network raises, and is logged to $JAXMM_NETWORK_LOG so the test can show none was made.
BLOCK_NETWORK = """
import os, socket
LOG = os.environ["JAXMM_NETWORK_LOG"]
LOCAL = ("localhost", "127.0.0.1", "::1", "", None)
def refuse(what):
  with open(LOG, "a") as f:
    f.write(what + "\\n")
  raise OSError("network access is blocked in this test: " + what)
connect = socket.socket.connect
def guarded_connect(self, address):
  if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
    refuse(f"connect {address}")
  return connect(self, address)
socket.socket.connect = guarded_connect
socket.socket.connect_ex = lambda self, address: guarded_connect(self, address) or 0
getaddrinfo = socket.getaddrinfo
def guarded_getaddrinfo(host, *args, **kwargs):
  if host not in LOCAL:
    refuse(f"getaddrinfo {host}")
  return getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = guarded_getaddrinfo
"""

PIPELINE_FLAGS = (
    "--config.pipeline.variants=('meta','concat')", "--config.pipeline.baselines_variant=concat",
    "--config.baselines.models.image=('logreg',)", "--config.baselines.models.meta=('logreg',)",
    "--config.baselines.models.fusion=('logreg',)", "--config.baselines.models.late=('logreg',)",
    "--config.baselines.pca=()", "--config.baselines.tasks=('binary',)",
    "--config.train.progress=False")


def run_main_job_offline(workdir, data_dir, tmp_path, mode: str = "pipeline",
                         variant: str | None = None) -> str:
  """`python -m jaxmm.main --mode=pipeline` (smoke, two variants; or another `mode`, on the
  config argument `variant`) in a subprocess whose sockets refuse every other host; returns
  its stdout."""
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(BLOCK_NETWORK)
  log = tmp_path / "network.log"
  env = dict(os.environ, JAXMM_DATA_DIR=data_dir, JAXMM_NETWORK_LOG=str(log),
             PYTHONPATH=os.pathsep.join([str(site), REPO, os.environ.get("PYTHONPATH", "")]),
             HF_HUB_OFFLINE="1", XLA_FLAGS=xla_flags(default_optimization=True))
  command = [sys.executable, "-m", "jaxmm.main",
             f"--config={os.path.join(REPO, 'configs', 'synthetic_derm.py')}:smoke"
             + (f",model={variant}" if variant else ""),
             f"--workdir={workdir}", f"--mode={mode}", *PIPELINE_FLAGS]
  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  assert not log.exists(), f"the main job tried to reach the network: {log.read_text()}"
  return done.stdout


def test_main_job_runs_offline_and_writes_every_step(data_dir, tmp_path):
  """The README's main job (smoke sized) end to end, with networking blocked: variants,
  comparison, saliency sample, explanation evaluation, baselines, SHAP, fairness, report."""
  workdir = tmp_path / "run"
  out = run_main_job_offline(str(workdir), data_dir, tmp_path)
  for variant in ("meta", "concat"):
    results = json.loads((workdir / variant / "results.json").read_text())
    assert results["final_step"] == 3  # the smoke schedule
    predictions = np.load(workdir / variant / "predictions" / "test.npz")
    assert predictions["logits"].shape == (len(predictions["index"]), 7)
  with open(workdir / "comparison.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["model"] for r in rows] == ["meta", "concat"]
  assert rows[1]["modalities"] == "image+meta" and rows[1]["fusion"] == "concat"
  meta_f1 = json.loads((workdir / "meta" / "results.json").read_text())["test"]["macro_f1"]
  concat_f1 = json.loads((workdir / "concat" / "results.json").read_text())["test"]["macro_f1"]
  margins = json.loads((workdir / "comparison.json").read_text())["fusion_margins"]
  assert margins["concat"]["vs_meta"] == pytest.approx(concat_f1 - meta_f1)
  assert "concat macro_f1 margin over unimodal models: meta" in out
  assert "saliency overlays of 8 test examples of concat" in out
  # Saliency overlays of the fusion variant's first test examples.
  figures = workdir / "concat" / "figures" / "saliency"
  assert sorted(p.name for p in figures.iterdir()) == ["methods.png", "modalities.png"]
  shards = list((workdir / "concat" / "analysis" / "saliency" / "test_sample").glob(
      "shard_*.npz"))
  assert len(shards) == 1
  assert (workdir / "concat" / "analysis" / "explanation_evaluation.json").exists()
  # The baselines of the concat run's embeddings (with SHAP of the metadata model), SHAP of
  # its metadata fields, the fairness tests across every model, and the report.
  with open(workdir / "concat" / "baselines" / "binary" / "table.csv") as f:
    baselines = [r["model"] for r in csv.DictReader(f)]
  assert baselines == ["image_logreg", "meta_logreg", "fusion_logreg", "late_logreg"]
  assert (workdir / "concat" / "baselines" / "binary" / "shap" / "meta_logreg" /
          "fields.npz").exists()
  assert (workdir / "concat" / "figures" / "shap" / "baselines_binary_meta_logreg" /
          "fields_summary.png").exists()
  assert (workdir / "concat" / "analysis" / "shap" / "fields.npz").exists()
  with open(workdir / "analysis" / "fairness" / "paired_tests.csv") as f:
    tests = {(r["test"], r["models"]) for r in csv.DictReader(f)}
  assert any(test == "mcnemar" and "concat" in models and "meta" in models
             for test, models in tests)
  report = (workdir / "report.html").read_text()
  assert f"report: {workdir / 'report.html'}" in out
  for section in ("fairness", "baselines", "shap", "saliency"):
    assert f'id="{section}' in report or f'-{section}"' in report, section
  # The README's --mode=evaluate_explanations on the fusion variant's run, with the same
  # config, reuses the main job's evaluation (the saliency sample's settings stay out of it)
  # and draws its figures.
  figures = workdir / "concat" / "figures" / "evaluation"
  drawn = sorted(p.name for p in figures.iterdir())
  for p in figures.iterdir():
    p.unlink()
  before = (workdir / "concat" / "analysis" / "explanation_evaluation.json").read_text()
  out = run_main_job_offline(str(workdir / "concat"), data_dir, tmp_path,
                             mode="evaluate_explanations", variant="concat")
  assert "evaluation figures: " in out and "reused" in out, out[-2000:]
  assert sorted(p.name for p in figures.iterdir()) == drawn and drawn
  after = json.loads((workdir / "concat" / "analysis" / "explanation_evaluation.json").read_text())
  assert after == json.loads(before)
