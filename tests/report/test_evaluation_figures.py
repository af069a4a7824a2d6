"""Evaluation figures from a fake analysis tree: which figures, valid PNGs, skipped inputs, and
the helpers that pick rows and centre columns."""
import json
import os
import shutil

import numpy as np
import PIL.Image

from jaxmm.data.atomic import write_npz_atomic
from jaxmm.evaluation import stats
from jaxmm.report import evaluation_figures
from jaxmm.saliency.runner import shard_file

N, S, SHARD = 6, 8, 4
CLASSES = ["a", "b", "c"]
METHODS = ("gradcam", "ig_smoothgrad")
IFA = "gradcam"
ALL_FIGURES = {"roi_agreement_gradcam.png", "roi_agreement_ig_smoothgrad.png",
               "gallery_gradcam.png", "gallery_ig_smoothgrad.png", f"importance_{IFA}.png",
               f"consistency_{IFA}.png", "faithfulness.png", "sanity.png", "confounder.png"}


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def saliency_data(rng) -> dict:
  label = np.array([0, 1, 2, 0, 1, 2])
  return {"index": np.arange(N), "label": label, "logits": rng.normal(size=(N, 3)),
          "image": rng.integers(0, 255, (N, S, S, 3), dtype=np.uint8),
          "roi_mask": np.pad(np.ones((N, 4, 4), np.uint8), ((0, 0), (2, 2), (2, 2))),
          "gradcam.normalized": rng.uniform(0, 1, (N, S, S)).astype(np.float32),
          "ig_smoothgrad.normalized": rng.uniform(-1, 1, (N, S, S)).astype(np.float32),
          "confounder": np.array([1, 0, 1, 1, 0, 0]),
          "confounder_mask": np.pad(np.ones((N, 2, 2), np.uint8), ((0, 0), (0, 6), (0, 6)))}


def write_saliency(folder, data):
  os.makedirs(folder)
  write_json(os.path.join(folder, "manifest.json"), {
      "split": "test", "methods": list(METHODS), "shard_size": SHARD, "num_examples": N})
  for shard, start in enumerate(range(0, N, SHARD)):
    write_npz_atomic(shard_file(folder, shard), {k: v[start:start + SHARD]
                                                 for k, v in data.items()})


def summary_rows(rng):
  groups = {"all": ["all"], "class x correct": ["a x False", "a x True", "b x True"],
            "sex": ["female", "male"], "age_group": ["<30", ">60"], "site": ["back", "face"]}
  rows = []
  for method in METHODS:
    for stratum, names in groups.items():
      for group in names:
        for metric in ("dice", "spearman"):
          mean = rng.uniform(0, 1)
          rows.append({"method": method, "stratification": stratum, "group": group,
                       "metric": metric, "n": 3, "mean": mean, "std": 0.1, "median": mean,
                       "ci_low": mean - 0.1, "ci_high": "" if group == "b x True" else mean + 0.1})
  return rows


def write_roi_agreement(folder, data, rng):
  stats.write_table_csv(os.path.join(folder, "summary.csv"), summary_rows(rng))
  galleries = {}
  for method in METHODS:
    dice = rng.uniform(0, 1, N)
    stats.write_table_csv(os.path.join(folder, f"{method}_per_image.csv"), [
        {"index": i, "class": CLASSES[data["label"][i]], "predicted": "a", "correct": i == 0,
         "dice": dice[i], "dice_threshold": 0.3, "spearman": 0.1} for i in range(N)])
    order = np.argsort(-dice)
    galleries[method] = {"dice": {"top": order[:2].tolist(), "bottom": order[::-1][:2].tolist()}}
  write_json(os.path.join(folder, "agreement.json"), {"maps": "normalized",
                                                      "galleries": galleries})


def write_ifa(folder, rng, features=5):
  os.makedirs(folder)
  matrix = lambda: rng.normal(size=(features, 3))
  write_npz_atomic(os.path.join(folder, "importance.npz"), {
      "reference_eq3": matrix(), "reference_eq4": matrix(), "evaluated_eq3": matrix(),
      "evaluated_eq4": matrix()})
  write_npz_atomic(os.path.join(folder, "per_example.npz"), {
      "label": np.arange(N) % 3, "target": np.arange(N) % 3, "target_logit": rng.normal(size=N),
      "sum.cam": rng.uniform(size=N), "sum.s_cam": rng.normal(size=N),
      "sum.fs_s_cam_top5": rng.normal(size=N)})
  stats.write_table_csv(os.path.join(folder, "consistency.csv"), [
      {"method": IFA, "variant": v, "r": 0.5, "p": 0.01, "n": N, "correlation": "spearman"}
      for v in ("cam", "s_cam")])  # no fs row: its r is computed by the figure
  write_json(os.path.join(folder, "overfitting.json"), {"relative_l2": 0.2})
  write_json(os.path.join(folder, "distribution.json"), {"split": "train", "per_class": {}})


def write_curves(analysis, rng):
  stats.write_table_csv(os.path.join(analysis, "faithfulness.csv"), [
      {"method": m, "n": 4, "steps": 4, "deletion_auc": 0.3, "insertion_auc": 0.5,
       "deletion_curve": json.dumps(np.sort(rng.uniform(size=5))[::-1].tolist()),
       "insertion_curve": json.dumps(np.sort(rng.uniform(size=5)).tolist())}
      for m in METHODS + ("random",)])
  layers = ["head/logits", "image/layer2/0", "image/stem"]
  stats.write_table_csv(os.path.join(analysis, "sanity.csv"), [
      {"method": m, "n": 2, "layer": layer, "step": step, "spearman": rng.uniform(-1, 1),
       "spearman_abs": rng.uniform(0, 1)} for m in METHODS for step, layer in enumerate(layers)])


def write_confounder(analysis, data, rng):
  rows = [{"method": m, "mass_on_artefact": 0.2, "control_mass": 0.05, "artefact_area": 0.06,
           "mass_t": 3.0, "mass_p": 0.004} for m in METHODS]
  write_json(os.path.join(analysis, "confounder.json"), {
      "affected_class": "a", "rates": dict(zip(CLASSES, [0.8, 0.1, 0.1])), "methods": rows,
      "features": {"method": IFA, "features": [1], "num_features": 5, "fs_p": 0.01,
                   "fs_fs_cam_mass": 0.3, "fs_cam_mass": 0.1, "fs_area": 0.06}})
  idx = np.flatnonzero(data["confounder"])
  write_npz_atomic(os.path.join(analysis, "confounder_examples.npz"), {
      "index": idx, "label": data["label"][idx], "affected_class": np.asarray(0),
      **{k: data[k][idx] for k in ("image", "roi_mask", "confounder_mask",
                                   "gradcam.normalized", "ig_smoothgrad.normalized")},
      "ifa_index": idx[:2], "class_cam": rng.normal(size=(2, S, S)),
      "class_fs_cam": rng.normal(size=(2, S, S))})


def fake_workdir(root) -> str:
  """A workdir whose analysis/ holds every input of every figure."""
  rng = np.random.default_rng(0)
  analysis = os.path.join(str(root), "analysis")
  data = saliency_data(rng)
  write_saliency(os.path.join(analysis, "saliency", "test"), data)
  write_roi_agreement(os.path.join(analysis, "roi_agreement"), data, rng)
  write_ifa(os.path.join(analysis, "ifa", IFA), rng)
  write_curves(analysis, rng)
  write_confounder(analysis, data, rng)
  return str(root)


def check_pngs(paths):
  for path in paths:
    with PIL.Image.open(path) as image:
      assert image.format == "PNG"
      assert image.size[0] > 300 and image.size[1] > 200, (path, image.size)


def test_every_figure_is_written(tmp_path):
  workdir = fake_workdir(tmp_path)
  paths = evaluation_figures.evaluation_figures(workdir, CLASSES)
  out_dir = os.path.join(workdir, "figures", "evaluation")
  assert {os.path.basename(p) for p in paths} == ALL_FIGURES
  assert all(os.path.dirname(p) == out_dir for p in paths)
  assert set(os.listdir(out_dir)) == ALL_FIGURES  # no temporary files left
  check_pngs(paths)


def test_absent_inputs_skip_their_figures(tmp_path):
  workdir = fake_workdir(tmp_path)
  evaluation_figures.evaluation_figures(workdir, CLASSES)  # an earlier, complete evaluation
  analysis = os.path.join(workdir, "analysis")
  for name in ("confounder.json", "confounder_examples.npz", "sanity.csv"):
    os.remove(os.path.join(analysis, name))
  shutil.rmtree(os.path.join(analysis, "saliency"))
  shutil.rmtree(os.path.join(analysis, "ifa"))
  paths = evaluation_figures.evaluation_figures(workdir, None)
  assert {os.path.basename(p) for p in paths} == {
      "roi_agreement_gradcam.png", "roi_agreement_ig_smoothgrad.png", "faithfulness.png"}
  check_pngs(paths)
  # the earlier evaluation's figures of the absent inputs are gone, not shown as current
  assert set(os.listdir(os.path.join(workdir, "figures", "evaluation"))) == \
      {os.path.basename(p) for p in paths}
  assert evaluation_figures.evaluation_figures(str(tmp_path / "empty"), CLASSES) == []


def confounder_title(monkeypatch, tmp_path, labels, affected: int) -> str:
  """The suptitle of the confounder figure of fake examples of these labels."""
  data = saliency_data(np.random.default_rng(2))
  n = len(labels)
  examples = {"index": np.arange(n), "label": np.asarray(labels),
              "affected_class": np.asarray(affected),
              **{k: data[k][:n] for k in ("image", "roi_mask", "confounder_mask",
                                          "gradcam.normalized")}}
  titles = []
  monkeypatch.setattr(evaluation_figures, "save_figure",
                      lambda fig, path: titles.append(fig._suptitle.get_text()) or path)
  evaluation_figures.confounder_figure(examples, None, CLASSES, str(tmp_path / "c.png"))
  return titles[0]


def test_confounder_title_says_which_classes_its_rows_are(monkeypatch, tmp_path):
  # the runner puts the affected class's images first, then other classes' with the artefact
  mixed = confounder_title(monkeypatch, tmp_path, [1, 0, 0], affected=1)
  assert "images of b with the artefact" not in mixed
  assert "images with the artefact, affected class b first (each row names its class)" in mixed
  only = confounder_title(monkeypatch, tmp_path, [1, 1], affected=1)
  assert "Confounder: images of b with the artefact and their maps" in only


def test_saliency_rows_reads_positions_across_shards_in_order(tmp_path):
  data = saliency_data(np.random.default_rng(1))
  folder = str(tmp_path / "saliency")
  write_saliency(folder, data)
  rows = evaluation_figures.saliency_rows(folder, [5, 0, 3, 99], ("image", "gradcam.normalized"))
  np.testing.assert_array_equal(rows["index"], [5, 0, 3])
  np.testing.assert_array_equal(rows["image"], data["image"][[5, 0, 3]])
  np.testing.assert_array_equal(rows["gradcam.normalized"], data["gradcam.normalized"][[5, 0, 3]])
  assert set(rows) == {"index", "image", "gradcam.normalized"}


def test_centred_columns_subtract_each_column_mean():
  matrix = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])
  np.testing.assert_allclose(evaluation_figures.centred_columns(matrix),
                             [[-2.0, -20.0], [0.0, -10.0], [2.0, 30.0]])


def test_class_cam_rows_follow_ifa_index():
  cams = np.arange(2)[:, None, None] * np.ones((2, S, S))
  examples = {"index": np.array([10, 11, 12]), "ifa_index": np.array([12, 10]),
              "class_cam": cams, "class_fs_cam": -cams}
  rows = evaluation_figures.class_cam_rows(examples)
  assert sorted(rows) == [0, 2]
  assert rows[2][0].max() == 0 and rows[0][0].min() == 1 and rows[0][1].max() == -1
  assert evaluation_figures.class_cam_rows({"index": np.array([1])}) == {}
