"""The run report (report_runner, html, run_figures) without a browser: one smoke model trained,
a pipeline dir around it, optional files added or left out, the page parsed and checked."""
import base64
import json
import os
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.text import Text
from sklearn import metrics as skm

from jaxmm import workflow
from jaxmm.data.atomic import write_npz_atomic, write_text_atomic
from jaxmm.evaluation import stats
from jaxmm.report import html, report_runner, run_figures
from jaxmm.report.saliency_figures import plt
from jaxmm.train import config_lib, loop, writer
from jaxmm.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOID_TAGS = {"meta", "link", "img", "br", "hr", "input", "source", "col", "area", "base", "wbr"}
EVIL = "<script>alert('x')</script>"


class PageParser(HTMLParser):
  """Collects ids, img srcs, hrefs and nesting errors (an end tag that closes no open one)."""

  def __init__(self):
    super().__init__()
    self.ids, self.srcs, self.hrefs, self.tags, self.errors, self.stack = [], [], [], [], [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags.append(tag)
    if "id" in attrs:
      self.ids.append(attrs["id"])
    if tag == "img":
      self.srcs.append(attrs.get("src", ""))
    if "href" in attrs:
      self.hrefs.append(attrs["href"])
    if tag not in VOID_TAGS:
      self.stack.append(tag)

  def handle_endtag(self, tag):
    if not self.stack or self.stack[-1] != tag:
      self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
    else:
      self.stack.pop()


def parse(path: str) -> tuple[PageParser, str]:
  with open(path, encoding="utf-8") as f:
    text = f.read()
  parser = PageParser()
  parser.feed(text)
  parser.close()
  return parser, text


def write_png(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  plt.imsave(path, np.linspace(0, 1, 64).reshape(8, 8))


@pytest.fixture(scope="module")
def pipeline_dir(data_dir, tmp_path_factory):
  """A pipeline dir: a trained smoke concat model, a copy of it as the meta variant, their
  comparison (workflow's own writer), and optional files of the other sections."""
  root = tmp_path_factory.mktemp("pipeline")
  config = config_lib.load_config_file(
      os.path.join(REPO, "configs", "synthetic_derm.py") + ":model=concat,smoke")
  config.data.data_dir = data_dir
  config.train.progress = False
  concat = str(root / "concat")
  results = loop.train_and_evaluate(config, concat)
  shutil.copytree(concat, root / "meta", ignore=shutil.ignore_patterns("checkpoints"))
  meta_config = workflow.variant_config(config, "meta")
  rows = workflow.comparison_rows({"meta": (meta_config, results), "concat": (config, results)})
  workflow.write_comparison(str(root), rows, workflow.fusion_margins(rows, "macro_f1"))
  stats.write_table_csv(root / "concat" / "analysis" / "fairness" / "slices.csv",
            [{"model": "concat", "attribute": "sex", "category": EVIL, "support": "12",
              "accuracy": "0.123456", "p": "1.5e-07"}])
  stats.write_table_csv(root / "concat" / "baselines" / "label" / "table.csv",
            [{"model": "fusion_logreg", "accuracy": "0.7777777", "pca_components": "9"}])
  write_png(str(root / "concat" / "figures" / "shap" / "summary.png"))
  os.makedirs(root / "concat" / "analysis", exist_ok=True)
  with open(root / "concat" / "analysis" / "explanation_evaluation.json", "w") as f:
    json.dump({"split": "test", "num_examples": 33, "methods": [
        {"method": "grad<cam>", "dice": 0.5, "dice_ci": [0.25, 0.75], "deletion_auc": 0.2}]}, f)
  path = report_runner.run_report(config, str(root))
  return str(root), path, results, config


def test_pipeline_report_has_every_section_of_the_files_present(pipeline_dir):
  root, path, _, _ = pipeline_dir
  assert path == os.path.join(root, "report.html")
  parser, _ = parse(path)
  assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
  expected = {"summary", "configuration", "dataset", "results", "comparison", "reproducibility",
              "variant-meta", "variant-concat"}
  for variant in ("meta", "concat"):
    expected |= {f"{variant}-{k}" for k in ("configuration", "results", "training",
                                            "confusion", "roc-pr")}
  expected |= {"concat-fairness", "concat-baselines", "concat-shap", "concat-explanations"}
  assert expected <= set(parser.ids), expected - set(parser.ids)
  assert len(parser.ids) == len(set(parser.ids))
  # sections whose files are absent are left out
  absent = {"meta-fairness", "meta-shap", "meta-baselines", "meta-explanations",
            "concat-saliency", "fairness", "baselines"}
  assert not absent & set(parser.ids)
  # pipeline-level sections first, then the variants in comparison order, then reproducibility
  order = [parser.ids.index(i) for i in ("summary", "results", "comparison", "variant-meta",
                                         "variant-concat", "reproducibility")]
  assert order == sorted(order)
  # every navigation link points at a section of the page
  anchors = [h[1:] for h in parser.hrefs if h.startswith("#")]
  assert set(anchors) <= set(parser.ids) and expected <= set(anchors)


def test_images_are_embedded_pngs_and_nothing_is_external(pipeline_dir):
  root, path, _, _ = pipeline_dir
  parser, text = parse(path)
  # 3 training figures per variant, the comparison bars, the SHAP figure
  assert len(parser.srcs) == 2 * 3 + 1 + 1
  for src in parser.srcs:
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
  assert "<script" not in text.lower() and "@import" not in text
  for href in parser.hrefs:
    assert not href.startswith(("http://", "https://", "//")), href
    if not href.startswith(("#", "data:")):
      assert os.path.exists(os.path.join(root, href)), href  # run records, by relative path
  assert {"meta/env_info.json", "concat/requirements.lock", "concat/config.json"} <= \
      set(parser.hrefs)
  for figure in ("training_curves", "confusion_matrix", "roc_pr"):
    assert os.path.exists(os.path.join(root, "concat", "figures", "training", f"{figure}.png"))


def test_file_strings_are_escaped_and_numbers_rounded(pipeline_dir):
  _, path, results, _ = pipeline_dir
  _, text = parse(path)
  assert EVIL not in text
  assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
  assert "<td class=\"num\">0.123</td>" in text and "0.123456" not in text
  assert "<td class=\"num\">1.50e-07</td>" in text  # a small p-value does not read as 0
  assert "<td class=\"num\">0.778</td>" in text and "<td class=\"num\">9</td>" in text
  # the comparison table and the per-variant metrics show the trained model's test metrics
  accuracy = html.format_number(results["test"]["accuracy"])
  assert text.count(f"<td class=\"num\">{accuracy}</td>") >= 4
  assert "0.500 [0.250, 0.750]" in text  # explanation metric with its interval
  assert "grad&lt;cam&gt;" in text and "grad<cam>" not in text  # JSON strings escaped too
  assert "--xla_gpu_deterministic_ops=true" in text


def test_dataset_counts_match_the_test_split(pipeline_dir):
  root, _, results, _ = pipeline_dir
  with np.load(os.path.join(root, "concat", "predictions", "test.npz")) as data:
    labels = data["label"]
  names = results["task"]["class_names"]
  rows = report_runner.class_count_rows(labels, names, multilabel=False)
  assert [r["class"] for r in rows] == names
  assert sum(r["count"] for r in rows) == results["task"]["split_sizes"]["test"] == len(labels)
  assert rows[0]["count"] == int(np.sum(labels == 0))
  np.testing.assert_allclose(sum(r["share"] for r in rows), 1.0)


def test_roc_curves_are_of_the_predictions_the_metrics_came_from(pipeline_dir):
  root, _, results, _ = pipeline_dir
  with np.load(os.path.join(root, "concat", "predictions", "test.npz")) as data:
    curves = run_figures.curve_targets(data["logits"], data["label"], multilabel=False)
  aucs = [skm.roc_auc_score(targets, scores) for _, targets, scores in curves]
  np.testing.assert_allclose(np.mean(aucs), results["test"]["roc_auc"], rtol=1e-6)


def test_multilabel_class_counts():
  labels = np.array([[1, -2], [0, -1], [1, 1], [-1, 0]])
  rows = report_runner.class_count_rows(labels, ["a", "b"], multilabel=True)
  assert rows == [{"label": "a", "positive": 2, "negative": 1, "uncertain": 1, "missing": 0},
                  {"label": "b", "positive": 1, "negative": 1, "uncertain": 1, "missing": 1}]


def test_run_dir_with_only_its_results_gets_only_those_sections(pipeline_dir, tmp_path):
  root, _, _, config = pipeline_dir
  for name in ("config.json", "results.json"):
    shutil.copy(os.path.join(root, "concat", name), tmp_path / name)
  parser, _ = parse(report_runner.run_report(config, str(tmp_path)))
  assert not parser.errors
  assert {"summary", "configuration", "dataset", "results", "confusion",
          "reproducibility"} <= set(parser.ids)
  assert not {"training", "roc-pr", "baselines", "shap", "fairness", "saliency",
              "explanations", "comparison"} & set(parser.ids)
  assert len(parser.srcs) == 1  # the confusion matrix, drawn from results.json
  assert os.listdir(tmp_path / "figures" / "training") == ["confusion_matrix.png"]


# ------------------------------------------------------------------ pieces


@pytest.mark.parametrize("value, shown, numeric", [
    ("0.123456", "0.123", True), (0.98765, "0.988", True), ("12", "12", True), (7, "7", True),
    ("1e-05", "1.00e-05", True), ("nan", "-", True), ("", "", False), (None, "", False),
    ("a<b", "a&lt;b", False), ("1_000", "1_000", False), (True, "True", False)])
def test_format_cell(value, shown, numeric):
  assert html.format_cell(value) == (shown, numeric)


def test_table_escapes_headers_and_drops_empty_columns():
  table = html.table([{"<h>": "x", "empty": "", "n": 2}, {"<h>": "y", "empty": None, "n": 3}])
  assert "<th scope=\"col\">&lt;h&gt;</th>" in table and "empty" not in table
  assert table.count("<tr>") == 3


def test_image_figure_refuses_what_is_not_a_png():
  with pytest.raises(ValueError, match="not a PNG"):
    html.image_figure(b"<svg onload=alert(1)>", "x")


def test_anchor_ids_keep_safe_characters_only():
  assert html.anchor_id("late fusion/v2", "roc-pr") == "late_fusion_v2-roc-pr"
  assert html.anchor_id("\"><script>") == "script"


def test_row_normalised_confusion():
  shares = run_figures.row_normalised([[3, 1], [0, 0]])
  np.testing.assert_allclose(shares, [[0.75, 0.25], [0.0, 0.0]])


def test_curve_targets_binary_multiclass_and_multilabel():
  logits = np.log(np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
  (column, targets, scores), = run_figures.curve_targets(logits, np.array([0, 1, 1]), False)
  assert column == 1
  np.testing.assert_array_equal(targets, [False, True, True])
  np.testing.assert_allclose(scores, [0.2, 0.7, 0.4])
  three = np.zeros((4, 3))
  # class 2 never occurs: no curve for it
  assert [c[0] for c in run_figures.curve_targets(three, np.array([0, 1, 0, 1]), False)] == [0, 1]
  labels = np.array([[1, -1], [0, 1], [-2, 1], [1, 1]])  # label 1 has no known negative
  curves = run_figures.curve_targets(np.zeros((4, 2)), labels, True)
  assert len(curves) == 1 and curves[0][0] == 0
  np.testing.assert_array_equal(curves[0][1], [True, False, True])  # the -2 entry left out
  np.testing.assert_allclose(curves[0][2], [0.5, 0.5, 0.5])


def test_read_metrics_keeps_the_last_record_and_skips_a_half_written_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"kind": "train", "step": 1, "loss": 2.0}\n'
                  '{"kind": "train", "step": 2, "loss": 1.5}\n'
                  '{"kind": "final_test", "step": 2, "accuracy": 0.1}\n'
                  '{"kind": "final_test", "step": 2, "accuracy": 0.2}\n'
                  '{"kind": "train", "step": 3, "lo')
  records = run_figures.read_metrics(str(path))
  assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("train", 2),
                                                       ("final_test", 2)]
  assert records[-1]["accuracy"] == 0.2
  steps, loss = run_figures.series(records, "train", "loss")
  np.testing.assert_array_equal(steps, [1, 2])
  np.testing.assert_array_equal(loss, [2.0, 1.5])
  assert run_figures.validation_metric({}, records) is None


def test_comparison_bars_need_a_metric(tmp_path):
  assert run_figures.comparison_bars([{"model": "a", "fusion": "-"}], str(tmp_path / "x.png")) \
      is None
  rows = [{"model": "a", "fusion": "-", "accuracy": 0.5, "roc_auc": None},
          {"model": "b", "fusion": "concat", "accuracy": 0.7, "roc_auc": 0.8}]
  assert run_figures.metric_columns(rows) == ["accuracy", "roc_auc"]  # None: NaN in JSON
  written = run_figures.comparison_bars(rows, str(tmp_path / "bars.png"))
  with open(written, "rb") as f:
    assert f.read(8) == html.PNG_SIGNATURE


def drawn_texts(monkeypatch, module) -> dict:
  """{file name: every text drawn in it (titles, labels, legend entries)} of the figures
  `module` saves from now on."""
  drawn = {}
  save = module.save_figure

  def record(fig, path):
    drawn[os.path.basename(path)] = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
    return save(fig, path)

  monkeypatch.setattr(module, "save_figure", record)
  return drawn


def write_multilabel_run(run_dir: str, policy: str) -> tuple[dict, np.ndarray, np.ndarray]:
  """A synthetic_cxr run dir trained under train.uncertain_policy `policy`: config.json,
  results.json (the metrics loop.compute_metrics writes) and predictions/test.npz, whose
  uncertain (-1) entries score high, so that dropping them or not changes every AUC."""
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_cxr.py") +
                                       ":smoke")
  config.train.uncertain_policy = policy
  names = ["Atelectasis", "Edema", "Effusion"]
  rng = np.random.default_rng(0)
  labels = rng.choice([1, 0, -1, -2], size=(200, 3), p=[0.3, 0.4, 0.2, 0.1])
  logits = rng.normal(size=labels.shape) + 1.5 * (labels == 1) + 1.0 * (labels == -1)
  metrics = metrics_lib.masked_multilabel_metrics(logits, labels, names, policy)
  write_text_atomic(os.path.join(run_dir, "config.json"), config.to_json_best_effort(indent=2))
  task = {"num_classes": 3, "class_names": names, "multilabel": True,
          "split_sizes": {"test": len(labels)}}
  write_text_atomic(os.path.join(run_dir, "results.json"), writer.dumps(
      {"best_step": 1, "final_step": 1, "task": task, "test": metrics}))
  write_npz_atomic(os.path.join(run_dir, "predictions", "test.npz"),
                   {"logits": logits.astype(np.float32), "label": labels.astype(np.int32),
                    "index": np.arange(len(labels))})
  return metrics, logits.astype(np.float32), labels


def test_multilabel_roc_curves_count_uncertain_labels_as_results_json_does(tmp_path,
                                                                             monkeypatch):
  """Under "zeros" (mimic_cxr's default) results.json reads a -1 as a negative; the ROC / PR
  figure scored the -1 entries out, so its legend AUCs were not the Results table's."""
  metrics, logits, labels = write_multilabel_run(str(tmp_path), "zeros")
  drawn = drawn_texts(monkeypatch, run_figures)
  run_figures.run_figures(str(tmp_path))
  texts = drawn["roc_pr.png"]
  for name, record in metrics["per_label"].items():
    assert f"{name} ({record['roc_auc']:.3f})" in texts, texts  # ROC legend
    assert f"{name} ({record['pr_auc']:.3f})" in texts, texts  # PR legend
  assert {"ROC, test split, per label, uncertain_policy zeros",
          "precision-recall, test split, per label, uncertain_policy zeros"} <= set(texts)
  curves = run_figures.curve_targets(logits, labels, True, "zeros")
  assert [k for k, _, _ in curves] == [0, 1, 2]
  for k, targets, scores in curves:
    assert skm.roc_auc_score(targets, scores) == pytest.approx(
        list(metrics["per_label"].values())[k]["roc_auc"], rel=1e-6)
  # Without config.json the figure falls back to training's default policy, "ignore".
  os.remove(tmp_path / "config.json")
  run_figures.run_figures(str(tmp_path))
  ignore = metrics_lib.masked_multilabel_metrics(logits, labels, ["a", "b", "c"], "ignore")
  assert f"Edema ({ignore['per_label']['b']['roc_auc']:.3f})" in drawn["roc_pr.png"]
  assert "ROC, test split, per label, uncertain_policy ignore" in drawn["roc_pr.png"]


def results_table_cells(body: str) -> tuple[list[str], dict]:
  """(header, {split: its cells}) of the first table of a Results section body."""
  table = body[:body.index("</table>")]
  header = re.findall(r"<th scope=\"col\">(.*?)</th>", table)
  rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
  return header, {cells[0]: dict(zip(header, cells)) for cells in rows if cells}


def test_a_null_metric_shows_as_a_dash_in_its_column(tmp_path):
  """results.json writes NaN as null: the cell reads '-' (undefined) in its METRIC_ORDER
  column; it was dropped, the column moved behind num_examples, or went when every split
  was NaN."""
  logits = np.random.default_rng(0).normal(size=(10, 2))
  defined = metrics_lib.multiclass_metrics(logits, np.arange(10) % 2, ["x", "y"])
  one_class = metrics_lib.multiclass_metrics(logits, np.zeros(10, int), ["x", "y"])
  assert np.isnan(one_class["roc_auc"]) and np.isnan(one_class["pr_auc"])
  for validation in (defined, one_class):  # NaN in the test split, then in every split
    write_text_atomic(str(tmp_path / "results.json"), writer.dumps(
        {"best_step": 1, "final_step": 1, "validation": validation, "test": one_class}))
    header, rows = results_table_cells(report_runner.run_results_body(str(tmp_path)))
    assert header == ["split", "accuracy", "macro_precision", "macro_recall", "macro_f1",
                      "roc_auc", "pr_auc", "num_examples"]
    assert rows["test"]["roc_auc"] == rows["test"]["pr_auc"] == "-"
    assert rows["test"]["accuracy"] == html.format_number(one_class["accuracy"])
    assert rows["validation"]["roc_auc"] == html.format_number(validation["roc_auc"])


def test_results_columns_follow_metric_order_over_every_split():
  """A metric one split lacks keeps its METRIC_ORDER place; its cell is blank, not '-'."""
  rows, columns = report_runner.results_table({
      "validation": {"loss": 0.5, "num_examples": 4, "accuracy": 0.75},
      "test": {"num_examples": 4, "roc_auc": None, "accuracy": 0.5, "per_class": {}}})
  assert columns == ["split", "accuracy", "roc_auc", "loss", "num_examples"]
  assert np.isnan(rows[1]["roc_auc"]) and "roc_auc" not in rows[0]
  table = html.table(rows, columns)
  assert "<td class=\"num\">-</td>" in table and "<td></td>" in table
