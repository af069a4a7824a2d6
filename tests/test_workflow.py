"""The main job: every variant trained, a comparison table and fusion margins written."""
import csv
import json

import pytest

from jaxmm import workflow


def test_fusion_margins_against_each_contained_modality():
  rows = [{"model": "image", "modalities": "image", "macro_f1": 0.5},
          {"model": "meta", "modalities": "meta", "macro_f1": 0.3},
          {"model": "text", "modalities": "text", "macro_f1": 0.9},
          {"model": "concat", "modalities": "image+meta", "macro_f1": 0.7}]
  margins = workflow.fusion_margins(rows, "macro_f1")
  assert margins.keys() == {"concat"}
  assert margins["concat"] == pytest.approx({"vs_image": 0.2, "vs_meta": 0.4})


def test_format_table_aligns_columns():
  table = workflow.format_table([{"model": "image", "macro_f1": 0.51234},
                                 {"model": "concat", "macro_f1": 0.7}])
  lines = table.splitlines()
  assert lines[0].split() == ["model", "macro_f1"]
  assert lines[2].split() == ["image", "0.512"] and lines[3].split() == ["concat", "0.700"]
  assert len({line.index(line.split()[1]) for line in lines[2:]}) == 1


def test_pipeline_trains_each_variant_and_compares(smoke_config, tmp_path, capsys):
  config = smoke_config("synthetic_derm")
  config.pipeline.variants = ("meta", "concat")
  config.pipeline.baselines_variant = "concat"
  config.baselines.models = {"image": ("logreg",), "meta": ("logreg",), "fusion": ("logreg",),
                             "late": ("logreg",)}
  config.baselines.pca = ()
  config.baselines.tasks = ("binary",)
  summary = workflow.run_pipeline(config, str(tmp_path))
  for variant in ("meta", "concat"):
    results = json.loads((tmp_path / variant / "results.json").read_text())
    assert results["final_step"] == config.train.num_steps
  with open(tmp_path / "comparison.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["model"] for r in rows] == ["meta", "concat"]
  assert rows[1]["modalities"] == "image+meta" and rows[1]["fusion"] == "concat"
  meta_f1 = json.loads((tmp_path / "meta" / "results.json").read_text())["test"]["macro_f1"]
  concat_f1 = json.loads((tmp_path / "concat" / "results.json").read_text())["test"]["macro_f1"]
  assert summary["fusion_margins"]["concat"]["vs_meta"] == pytest.approx(concat_f1 - meta_f1)
  out = capsys.readouterr().out
  assert "concat macro_f1 margin over unimodal models: meta" in out
  assert "saliency overlays of 8 test examples of concat" in out
  # The job ends with saliency overlays of the fusion variant's first test examples.
  figures = tmp_path / "concat" / "figures" / "saliency"
  assert sorted(p.name for p in figures.iterdir()) == ["methods.png", "modalities.png"]
  assert [str(figures / "methods.png"), str(figures / "modalities.png")] == \
      summary["saliency_figures"]
  shards = list((tmp_path / "concat" / "analysis" / "saliency" / "test_sample").glob("shard_*.npz"))
  assert len(shards) == 1

  # Then the baselines of the concat run's embeddings (with SHAP of the metadata model), SHAP of
  # its metadata fields, the fairness tests across every model, and the report.
  with open(tmp_path / "concat" / "baselines" / "binary" / "table.csv") as f:
    baselines = [r["model"] for r in csv.DictReader(f)]
  assert baselines == ["image_logreg", "meta_logreg", "fusion_logreg", "late_logreg"]
  assert (tmp_path / "concat" / "baselines" / "binary" / "shap" / "meta_logreg" /
          "fields.npz").exists()
  assert (tmp_path / "concat" / "figures" / "shap" / "baselines_binary_meta_logreg" /
          "fields_summary.png").exists()
  assert (tmp_path / "concat" / "analysis" / "shap" / "fields.npz").exists()
  with open(tmp_path / "analysis" / "fairness" / "paired_tests.csv") as f:
    tests = {(r["test"], r["models"]) for r in csv.DictReader(f)}
  assert any(test == "mcnemar" and "concat" in models and "meta" in models
             for test, models in tests)
  report = (tmp_path / "report.html").read_text()
  assert summary["report"] == str(tmp_path / "report.html")
  for section in ("fairness", "baselines", "shap", "saliency"):
    assert f'id="{section}' in report or f'-{section}"' in report, section
