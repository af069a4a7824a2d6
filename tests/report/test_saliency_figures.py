"""Saliency figures from runner-shaped data: which figures, valid PNGs, atomic writes."""
import os

import matplotlib.image
import numpy as np

from jaxmm.report import saliency_figures

N, S = 3, 16


def runner_like(multilabel: bool = False) -> dict:
  rng = np.random.default_rng(0)
  k = (N, 2) if multilabel else (N,)
  maps = lambda signed: rng.uniform(-1 if signed else 0, 1, k + (S, S)).astype(np.float32)
  data = {"index": np.arange(N), "logits": rng.normal(size=(N, 4)),
          "label": rng.integers(0, 2, (N, 4)) if multilabel else np.array([0, 1, 2]),
          "targets": np.argsort(-rng.normal(size=(N, 4)), 1)[:, :2] if multilabel
          else np.array([0, 1, 3]),
          "image": rng.integers(0, 255, (N, S, S, 3), dtype=np.uint8),
          "roi_mask": (rng.uniform(size=(N, S, S)) > 0.7).astype(np.uint8),
          "id": np.array(["a", "b", "c"]),
          "gradcam.normalized": maps(False), "ig_smoothgrad.normalized": maps(True),
          "multimodal_ig.modality_shares": rng.dirichlet([1, 1], k),
          "multimodal_ig.meta_fields": rng.normal(size=k + (3,)),
          "multimodal_ig.text_tokens": rng.normal(size=k + (5,)),
          "tokens": np.array([["[CLS]", "no", "effusion", "[SEP]", "[PAD]"]] * N)}
  return data


def test_multiclass_figures(tmp_path):
  paths = saliency_figures.saliency_figures(
      runner_like(), ["gradcam", "ig_smoothgrad", "multimodal_ig"], ["a", "b", "c", "d"],
      ("image", "meta"), str(tmp_path), ["age", "sex", "site"])
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["methods.png", "modalities.png", "tokens_0.png", "tokens_1.png",
                   "tokens_2.png"]
  panel = matplotlib.image.imread(str(tmp_path / "methods.png"))
  assert panel.shape[0] > 200 and panel.shape[1] > panel.shape[0] * 0.5
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_multilabel_top_k_panels(tmp_path):
  paths = saliency_figures.saliency_figures(
      runner_like(multilabel=True), ["gradcam", "ig_smoothgrad"], list("abcd"),
      ("image", "text"), str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == [
      "modalities.png", "tokens_0.png", "tokens_1.png", "tokens_2.png", "top_k_gradcam.png",
      "top_k_ig_smoothgrad.png"]
  assert matplotlib.image.imread(paths[0]).ndim == 3


def test_top_k_inputs_name_the_class_of_their_roi_outline(tmp_path, monkeypatch):
  # The saved roi_mask of a top-k run is the first label's own mask (synthetic_cxr), while
  # the row shows k maps: the input's title says whose ROI the outline is.
  titles = []
  def keep_titles(fig, path):
    titles.extend(ax.get_title() for ax in fig.axes)
    return saliency_figures.plt.close(fig)
  monkeypatch.setattr(saliency_figures, "save_figure", keep_titles)
  data = runner_like(multilabel=True)
  data["roi_mask"][1] = 0
  saliency_figures.top_k_panels(data, "gradcam", list("abcd"), str(tmp_path / "x.png"))
  first = [list("abcd")[t] for t in data["targets"][:, 0]]
  assert titles[0] == f"a\nROI: {first[0]}" and titles[3] == "b"
  assert titles[6] == f"c\nROI: {first[2]}"


def test_token_plots_name_the_class_they_explain(tmp_path, monkeypatch):
  # A multilabel token plot shows the first target's attributions: its title said only
  # "example N", though the example has k targets.
  titles = []
  def keep_titles(fig, path):
    titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
    saliency_figures.plt.close(fig)
    return path
  monkeypatch.setattr(saliency_figures, "save_figure", keep_titles)
  for multilabel in (True, False):
    titles.clear()
    data = runner_like(multilabel)
    data["index"] = np.array([7, 8, 9])
    saliency_figures.saliency_figures(data, ["multimodal_ig"], list("abcd"), ("image", "text"),
                                      str(tmp_path))
    first = data["targets"][:, 0] if multilabel else data["targets"]
    assert titles == [f"example {7 + i}: attributions to {'abcd'[t]}"
                      for i, t in enumerate(first)]
