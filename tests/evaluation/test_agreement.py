"""Per-case tables of ROI agreement (evaluation.agreement): a case's Dice threshold is that of
the image its Dice comes from."""
import numpy as np
import pytest

from jaxmm.evaluation import agreement

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


def test_best_dice_thresholds_ties_go_to_the_first_image_and_order_follows_the_cases():
  images = {"case": np.array(["b", "a", "b", "a", "c", "c"]),
            "dice": np.array([0.2, np.nan, 0.5, 0.3, 0.6, 0.6]),
            "dice_threshold": np.array([0.1, np.nan, 0.3, 0.4, 0.7, 0.8], np.float32)}
  thresholds = agreement.best_dice_thresholds(images, {"case": np.array(["b", "a", "c"])})
  np.testing.assert_array_equal(thresholds, np.array([0.3, 0.4, 0.7], np.float32))
  assert thresholds.dtype == np.float32
  empty = {"case": np.array([], str), "dice": np.array([]), "dice_threshold": np.array([])}
  assert agreement.best_dice_thresholds(empty, {"case": np.array([], str)}).shape == (0,)
