"""Per-case tables of ROI agreement (evaluation.agreement): a case's Dice threshold, id and
prediction are those of the image its Dice comes from, and the class x correctness summary files
each case's value under the correctness of the image that value comes from."""
import numpy as np
import pytest

from jaxmm.evaluation import agreement, stats

H = W = 8


def two_image_case_data() -> dict:
  """Case "a" of a poor map first (Dice 0.4 at threshold 0) and a two-level map second (Dice 1
  from threshold 0.11 on); case "b" of one NaN map."""
  mask = np.zeros((H, W), bool)
  mask[2:6, 2:6] = True
  good = np.where(mask, 0.9, 0.1).astype(np.float32)
  poor = np.where(np.roll(mask, 3, 1), 0.5, 0.0).astype(np.float32)
  broken = np.full((H, W), np.nan, np.float32)
  return {"gradcam.normalized": np.stack([poor, good, broken]),
          "roi_mask": np.stack([mask] * 3), "targets": np.zeros(3, np.int32),
          "label": np.zeros(3, np.int32), "logits": np.tile([[1.0, 0.0]], (3, 1)),
          "index": np.arange(3), "lesion_id": np.array(["a", "a", "b"])}


def test_case_dice_threshold_comes_from_the_best_dice_image():
  data = two_image_case_data()
  with pytest.warns(RuntimeWarning, match="examples 2"):
    images = agreement.per_image_table(data, "gradcam", ["x", "y"])
  np.testing.assert_allclose(images["dice"][:2], [0.4, 1.0], rtol=1e-6)
  np.testing.assert_allclose(images["dice_threshold"][:2], [0.0, 0.11], rtol=1e-6)
  with pytest.warns(RuntimeWarning, match="examples 2"):
    cases = agreement.evaluate_method(data, "gradcam", ["x", "y"], num_resamples=10)["cases"]
  assert list(cases["case"]) == ["a", "b"]
  np.testing.assert_allclose(cases["dice"][0], 1.0)
  np.testing.assert_allclose(cases["dice_threshold"][0], 0.11, rtol=1e-6)  # not 0.0 (first)
  assert np.isnan(cases["dice"][1]) and np.isnan(cases["dice_threshold"][1])


def test_a_cases_columns_come_from_its_best_dice_image_first_on_ties():
  """The per-case row's id, prediction and Dice threshold came from the case's first image,
  next to another image's Dice."""
  images = {"case": np.array(["b", "a", "b", "a", "c", "c"]),
            "dice": np.array([0.2, np.nan, 0.5, 0.3, 0.6, 0.6]),
            "spearman": np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5]),
            "index": np.arange(6),
            "dice_threshold": np.array([0.1, np.nan, 0.3, 0.4, 0.7, 0.8], np.float32)}
  cases = stats.case_level(images, "case", ["dice", "spearman"], source="dice")
  np.testing.assert_array_equal(cases["case"], ["b", "a", "c"])
  np.testing.assert_array_equal(cases["index"], [2, 3, 4])
  np.testing.assert_array_equal(cases["dice_threshold"], np.array([0.3, 0.4, 0.7], np.float32))
  assert cases["dice_threshold"].dtype == np.float32
  np.testing.assert_array_equal(cases["spearman"], [0.9, 0.3, 0.5])  # each metric's own best
  empty = {k: v[:0] for k, v in images.items()}
  assert stats.case_level(empty, "case", ["dice"], source="dice")["index"].shape == (0,)


def mixed_correctness_data() -> dict:
  """Case "a": a correctly classified image with a poor map (Dice 0.4) and a misclassified one
  with a perfect map (Dice 1); case "b": one correctly classified image with the poor map."""
  mask = np.zeros((H, W), bool)
  mask[2:6, 2:6] = True
  perfect = np.where(mask, 1.0, 0.0).astype(np.float32)
  poor = np.where(np.roll(mask, 4, 1), 1.0, 0.0).astype(np.float32)
  return {"gradcam.normalized": np.stack([poor, perfect, poor]),
          "roi_mask": np.stack([mask] * 3), "label": np.array([0, 0, 0]),
          "targets": np.array([0, 1, 0]),
          "logits": np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]),
          "index": np.arange(3), "lesion_id": np.array(["a", "a", "b"])}


def test_class_x_correctness_files_a_cases_value_under_its_images_correctness():
  """A case's best Dice came from its misclassified image but was filed under "correct" (the
  correctness of its first image); paper 004 counts a case once, by its best image."""
  result = agreement.evaluate_method(mixed_correctness_data(), "gradcam", ["nv", "mel"],
                                     num_resamples=10)
  images, cases = result["images"], result["cases"]
  assert images["correct"].tolist() == [True, False, True]
  np.testing.assert_allclose(images["dice"], [0.4, 1.0, 0.4], rtol=1e-6)
  assert cases["index"].tolist() == [1, 2] and cases["predicted"].tolist() == ["mel", "nv"]
  assert cases["correct"].tolist() == [False, True]
  strata = {(r["group"], r["metric"]): r for r in result["summaries"]
            if r["stratification"] == "class x correct"}
  assert strata["nv x False", "dice"]["n"] == 1
  assert strata["nv x False", "dice"]["mean"] == pytest.approx(1.0)
  assert strata["nv x True", "dice"]["n"] == 1
  assert strata["nv x True", "dice"]["mean"] == pytest.approx(0.4)
  # Each metric files a case under the image its own value comes from: the misclassified
  # image's map is also the better one by Spearman, so there too.
  assert strata["nv x False", "spearman"]["n"] == 1
  overall = {r["metric"]: r for r in result["summaries"] if r["stratification"] == "all"}
  assert overall["dice"]["n"] == 2  # one value per case


def test_each_metric_takes_its_stratum_from_its_own_best_image():
  images = {"case": np.array(["a", "a"]), "class": np.array(["nv", "nv"]),
            "correct": np.array([True, False]), "dice": np.array([0.2, 0.9]),
            "spearman": np.array([0.8, 0.1])}
  dice = agreement.metric_cases(images, "dice")
  spearman = agreement.metric_cases(images, "spearman")
  assert dice["correct"].tolist() == [False] and dice["dice"].tolist() == [0.9]
  assert spearman["correct"].tolist() == [True] and spearman["spearman"].tolist() == [0.8]
