"""The report shows the current results only: each figure writer clears the figures it owns
before drawing (a model of an earlier run leaves none behind, another writer's files stay),
stale baselines tables and SHAP folders are left out, and every analysis section states the
checkpoint step its files record, with a warning when that is not results.json's best step."""
import json
import os
import re

import numpy as np

from jaxmm.report import baselines_figures, evaluation_figures, fairness_figures, html
from jaxmm.report import report_runner, run_figures, saliency_figures, shap_figures
from jaxmm.report.saliency_figures import plt


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def write_png(path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  plt.imsave(path, np.linspace(0, 1, 64).reshape(8, 8))
  return path


def write_csv(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def section(page: str, section_id: str) -> str:
  """The inner HTML of <section id=section_id> ('' when absent)."""
  match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
  return match.group(1) if match else ""


def figure_captions(body: str) -> list[str]:
  return re.findall(r"<figcaption>(.*?)</figcaption>", body)


def baselines_summary(best: str, shap_models=(), step: int = 3) -> dict:
  """baselines.json of one binary task whose best model is `best` (no fusion curves)."""
  rows = [{"model": best, "features": best.split("_")[0], "macro_f1": 0.6, "accuracy": 0.7}]
  return {"checkpoint_step": step, "config": {"tsne_points": 0, "seed": 0},
          "feature_sets": ["image", "meta", "fusion"],
          "tasks": {"binary": {"class_names": ["benign", "malignant"], "rows": rows,
                               "best_model": best, "best_fusion_model": None,
                               "confusion_matrix": {best: [[5, 1], [2, 4]]},
                               "shap": {m: {"file": "x", "explainer": "linear"}
                                        for m in shap_models}}}}


# ------------------------------------------------------------------ R5: stale figures

def test_baselines_rerun_leaves_no_figure_of_a_model_it_no_longer_has(tmp_path):
  run = str(tmp_path)
  write_json(os.path.join(run, "baselines", "baselines.json"),
             baselines_summary("fusion_logreg"))
  first = baselines_figures.baselines_figures(run)
  assert "binary_confusion_fusion_logreg.png" in {os.path.basename(p) for p in first}
  # a rerun with other models: the old best model's confusion matrix must go
  write_json(os.path.join(run, "baselines", "baselines.json"), baselines_summary("fusion_svm"))
  second = baselines_figures.baselines_figures(run)
  folder = os.path.join(run, "figures", "baselines")
  assert sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in second) == \
      ["binary_comparison.png", "binary_confusion_fusion_svm.png"]
  page = report_runner.build_report(None, run)
  assert figure_captions(section(page, "baselines")) == [
      "figures/baselines/binary_comparison.png", "figures/baselines/binary_confusion_fusion_svm.png"]


def test_each_writer_clears_its_own_figures_and_keeps_the_others(tmp_path):
  """Each writer, run on inputs that give none of its figures, removes the figures of its
  names that an earlier run left, and keeps other files of the folder and its subfolders."""
  root = str(tmp_path)
  figures = os.path.join(root, "figures")
  owned = {
      "training": ["training_curves.png", "confusion_matrix.png", "roc_pr.png"],
      "comparison": ["model_comparison.png"],
      "baselines": ["multiclass_confusion_image_knn.png", "pca_explained_variance.png"],
      "shap": ["fields_summary.png", "fields_bar.png", "fields_waterfall_7.png",
               "tokens_3.png"],
      "fairness": ["accuracy_jaxmm_concat.png", "headline_ci_jaxmm.png"],
      "evaluation": ["gallery_gradcam.png", "roi_agreement_old.png", "confounder.png",
                     "faithfulness.png"],
      "saliency": ["methods.png", "top_k_gradcam.png", "modalities.png", "tokens_0.png"],
  }
  for folder, names in owned.items():
    for name in names:
      write_png(os.path.join(figures, folder, name))
  kept = [write_png(os.path.join(figures, "shap", "baselines_binary_meta_tree", "fields_bar.png")),
          write_png(os.path.join(figures, "evaluation", "notes.png")),
          write_png(os.path.join(figures, "saliency", "other.png"))]
  for folder in ("fairness", "shap", "training"):
    kept.append(write_png(os.path.join(figures, folder, "by_hand.png")))
  assert run_figures.run_figures(root) == []
  assert run_figures.pipeline_figures(root) == []
  assert baselines_figures.baselines_figures(root) == []
  assert shap_figures.shap_figures(os.path.join(root, "analysis", "shap"),
                                   os.path.join(figures, "shap")) == []
  assert fairness_figures.fairness_figures(root) == []
  assert evaluation_figures.evaluation_figures(root, ["a", "b"]) == []
  assert saliency_figures.saliency_figures({"targets": np.zeros(2)}, [], ["a", "b"], ("image",),
                                           os.path.join(figures, "saliency")) == []
  for folder, names in owned.items():
    left = [n for n in names if os.path.exists(os.path.join(figures, folder, n))]
    assert not left, (folder, left)
  assert all(os.path.exists(p) for p in kept)


def test_report_leaves_out_baselines_tasks_and_shap_folders_of_an_earlier_run(tmp_path):
  run = str(tmp_path)
  write_json(os.path.join(run, "baselines", "baselines.json"),
             baselines_summary("fusion_svm", shap_models=("meta_tree",)))
  write_csv(os.path.join(run, "baselines", "binary", "table.csv"), "model,accuracy\nfusion_svm,0.7\n")
  write_csv(os.path.join(run, "baselines", "multiclass", "table.csv"),
            "model,accuracy\nfusion_old,0.5\n")
  write_png(os.path.join(run, "figures", "shap", "fields_bar.png"))
  for model in ("meta_tree", "meta_logreg"):
    write_png(os.path.join(run, "figures", "shap", f"baselines_binary_{model}", "fields_bar.png"))
  page = report_runner.build_report(None, run)
  baselines = section(page, "baselines")
  assert "fusion_svm" in baselines and "fusion_old" not in baselines
  assert "task multiclass" not in baselines
  assert figure_captions(section(page, "shap")) == [
      "figures/shap/baselines_binary_meta_tree/fields_bar.png", "figures/shap/fields_bar.png"]


# ------------------------------------------------------------------ R6: checkpoint steps

def analysed_run(root: str, best: int, analysis_step: int) -> str:
  """A run dir whose results.json names `best` and whose analyses record `analysis_step`
  (baselines: the best step)."""
  write_json(os.path.join(root, "results.json"), {
      "best_step": best, "final_step": 9,
      "test": {"num_examples": 10, "accuracy": 0.5}})
  write_json(os.path.join(root, "baselines", "baselines.json"),
             baselines_summary("fusion_svm", step=best))
  write_csv(os.path.join(root, "baselines", "binary", "table.csv"), "model,accuracy\nfusion_svm,0.7\n")
  os.makedirs(os.path.join(root, "analysis", "shap"))
  np.savez(os.path.join(root, "analysis", "shap", "fields.npz"),
           checkpoint_step=np.array(analysis_step), values=np.zeros((2, 3, 2)))
  write_png(os.path.join(root, "figures", "shap", "fields_bar.png"))
  write_json(os.path.join(root, "analysis", "saliency", "test_sample", "manifest.json"),
             {"split": "test", "checkpoint_step": analysis_step})
  write_png(os.path.join(root, "figures", "saliency", "methods.png"))
  write_json(os.path.join(root, "analysis", "saliency", "evaluation_test", "manifest.json"),
             {"split": "test", "checkpoint_step": analysis_step})
  write_json(os.path.join(root, "analysis", "explanation_evaluation.json"), {
      "split": "test", "checkpoint_step": analysis_step, "num_examples": 33,
      "saliency_directory": "analysis/saliency/evaluation_test",
      "methods": [{"method": "gradcam", "dice": 0.5}]})
  return root


def test_analysis_of_an_older_checkpoint_is_flagged(tmp_path):
  run = analysed_run(str(tmp_path), best=6, analysis_step=3)
  page = report_runner.build_report(None, run)
  for section_id, files in (
      ("shap", ["analysis/shap/fields.npz"]),
      ("saliency", ["analysis/saliency/test_sample/manifest.json"]),
      ("explanations", ["analysis/explanation_evaluation.json",
                        "analysis/saliency/evaluation_test/manifest.json"])):
    body = section(page, section_id)
    assert f"Computed from checkpoint step 3 ({', '.join(files)})." in body, section_id
    assert 'class="warning"' in body and "best checkpoint, step 6" in body, section_id
  assert "--mode=evaluate_explanations" in section(page, "explanations")
  assert "Explanation evaluation, test split, 33 examples, checkpoint step 3" in page
  # the baselines used the best checkpoint: stated, not flagged
  baselines = section(page, "baselines")
  assert "Computed from checkpoint step 6 (baselines/baselines.json)." in baselines
  assert 'class="warning"' not in baselines
  summary = section(page, "summary")
  assert 'class="warning"' in summary
  for title in ("SHAP", "Saliency", "Explanation evaluation"):
    assert f"{title} (checkpoint step 3)" in summary
  assert "Baselines (" not in summary


def test_analysis_of_the_best_checkpoint_is_not_flagged(tmp_path):
  run = analysed_run(str(tmp_path), best=6, analysis_step=6)
  page = report_runner.build_report(None, run)
  assert 'class="warning"' not in page
  assert "Computed from checkpoint step 6 (analysis/shap/fields.npz)." in section(page, "shap")


def test_step_notes_name_each_step_and_flag_only_the_others():
  assert report_runner.step_notes({}, 6, "shap") == ""
  notes = report_runner.step_notes({"a.json": 6, "b.npz": 3, "baselines/baselines.json": 3}, 6,
                                   "shap")
  assert "Computed from checkpoint step 3 (b.npz, baselines/baselines.json); checkpoint step 6 " \
         "(a.json)." in notes
  warning = notes.split('class="warning"', 1)[1]
  assert "checkpoint step 3," in warning and "6," not in warning.split("best")[0]
  assert "<code>--mode=baselines</code> and <code>--mode=shap</code>" in warning
  assert "warning" not in report_runner.step_notes({"a.json": 3}, None, "shap")
  assert html.warning("x").startswith('<p class="warning">')


def test_recorded_step_reads_json_and_npz_and_tolerates_bad_files(tmp_path):
  write_json(str(tmp_path / "a.json"), {"checkpoint_step": 4})
  np.savez(str(tmp_path / "b.npz"), checkpoint_step=np.array(5))
  np.savez(str(tmp_path / "c.npz"), values=np.zeros(2))
  (tmp_path / "d.npz").write_bytes(b"half written")
  (tmp_path / "e.json").write_text("[1, 2]")
  assert [report_runner.recorded_step(str(tmp_path / n)) for n in
          ("a.json", "b.npz", "c.npz", "d.npz", "e.json", "absent.json")] == \
      [4, 5, None, None, None, None]


def test_pipeline_summary_names_the_variant_with_stale_analyses(tmp_path):
  fresh = analysed_run(str(tmp_path / "meta"), best=6, analysis_step=6)
  stale = analysed_run(str(tmp_path / "concat"), best=6, analysis_step=3)
  warning = report_runner.stale_warning([("meta", fresh), ("concat", stale)], pipeline=True)
  assert warning.startswith('<p class="warning">')
  assert "variant concat: SHAP (checkpoint step 3), Saliency (checkpoint step 3), " \
         "Explanation evaluation (checkpoint step 3)." in warning
  assert "meta" not in warning
  assert report_runner.stale_warning([("meta", fresh)], pipeline=True) == ""
