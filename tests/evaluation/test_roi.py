"""ROI agreement metrics: hand-made masks with known answers, a brute-force Dice loop, and
parity with scipy's Spearman and sklearn's ROC-AUC."""
import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from jaxmm.evaluation import agreement, roi, stats

T = roi.THRESHOLDS


def square_roi_map(inside: float = 0.8, outside: float = 0.3):
  """An 8x8 map equal to `inside` on a 4x4 ROI and `outside` elsewhere, [1, 8, 8] each."""
  mask = np.zeros((1, 8, 8), bool)
  mask[0, 2:6, 2:6] = True
  return np.where(mask, np.float32(inside), np.float32(outside)).astype(np.float32), mask


def random_maps_with_ties(seed: int, shape=(3, 12, 12)):
  """Signed maps rounded to 0.1 (many ties) and random masks with 10-60% ROI pixels."""
  rng = np.random.default_rng(seed)
  maps = np.round(rng.uniform(-1, 1, shape), 1).astype(np.float32)
  masks = rng.uniform(size=shape) < rng.uniform(0.1, 0.6, (shape[0], 1, 1))
  return maps, masks


def brute_force_dice_curve(maps, masks):
  """Dice(t) for each threshold by comparing map >= t, float32 as the JAX version."""
  curve = np.empty((maps.shape[0], T.size), np.float32)
  roi_size = masks.sum((1, 2))
  for j, t in enumerate(T):
    salient = maps >= t
    tp = (salient & masks).sum((1, 2))
    curve[:, j] = np.float32(2 * tp) / np.float32(salient.sum((1, 2)) + roi_size)
  return curve


def test_thresholds_are_the_float32_multiples_of_one_hundredth():
  assert T.dtype == np.float32 and T.size == 101
  np.testing.assert_array_equal(T, np.float32([k / 100 for k in range(101)]))


def test_two_level_map_best_dice_is_one_at_the_first_threshold_above_the_background():
  maps, mask = square_roi_map()
  curve = np.asarray(roi.dice_curve(maps, mask))[0]
  # t <= 0.30 (the background 0.3 >= float32(0.30)): S = all 64 pixels, 2*16 / (64 + 16).
  np.testing.assert_allclose(curve[:31], 0.4, rtol=1e-6)
  np.testing.assert_array_equal(curve[31:81], 1.0)  # 0.31 .. 0.80: S = ROI
  np.testing.assert_array_equal(curve[81:], 0.0)  # above 0.8 nothing is salient
  best = roi.best_threshold_dice(maps, mask)
  assert float(best["dice"][0]) == 1.0
  assert float(best["threshold"][0]) == np.float32(0.31)  # ties -> the smallest threshold


def test_best_dice_at_an_intermediate_threshold_in_closed_form():
  # ROI (20 px): 10 at 0.9 and 10 at 0.2; outside (80 px): 5 at 0.5 and 75 at 0.1.
  values = np.float32([0.9] * 10 + [0.2] * 10 + [0.5] * 5 + [0.1] * 75)
  mask = np.arange(100) < 20
  maps, masks = values.reshape(1, 10, 10), mask.reshape(1, 10, 10)
  curve = np.asarray(roi.dice_curve(maps, masks))[0]
  expected = {0: 40 / 120, 10: 40 / 120, 11: 40 / 45, 20: 40 / 45, 21: 20 / 35, 50: 20 / 35,
              51: 20 / 30, 90: 20 / 30, 91: 0.0}
  for index, dice in expected.items():
    np.testing.assert_allclose(curve[index], dice, rtol=1e-6, err_msg=f"t = {T[index]}")
  best = roi.best_threshold_dice(maps, masks)
  np.testing.assert_allclose(best["dice"], [8 / 9], rtol=1e-6)  # 2*20 / (25 + 20)
  assert float(best["threshold"][0]) == np.float32(0.11)


def test_dice_curve_equals_a_brute_force_loop_over_thresholds():
  rng = np.random.default_rng(0)
  maps = rng.uniform(-0.2, 1.1, (4, 16, 16)).astype(np.float32)
  # Values exactly on thresholds (0.07 as float32), on both sides of them, and -0.0.
  on_grid = T[rng.integers(0, T.size, (4, 16, 16))]
  nudged = np.nextafter(on_grid, np.float32(rng.choice([-1, 1]) * 2))
  pick = rng.integers(0, 3, maps.shape)
  maps = np.where(pick == 0, on_grid, np.where(pick == 1, nudged, maps)).astype(np.float32)
  maps[0, 0, :2] = [np.float32(0.07), -0.0]
  masks = rng.uniform(size=maps.shape) < 0.3
  np.testing.assert_array_equal(roi.dice_curve(maps, masks), brute_force_dice_curve(maps, masks))


def test_average_ranks_and_binary_ranks_equal_scipy_rankdata():
  maps, _ = random_maps_with_ties(1)
  x = maps.reshape(3, -1)
  np.testing.assert_array_equal(roi.average_ranks(x), scipy.stats.rankdata(x, axis=1))
  mask = np.bool_([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(roi.binary_average_ranks(mask), scipy.stats.rankdata(mask, axis=1))


@pytest.mark.parametrize("shape", [(3, 12, 12), (1, 224, 224)])
def test_spearman_and_roc_auc_equal_scipy_and_sklearn_with_ties(shape):
  maps, masks = random_maps_with_ties(2, shape)
  spearman = np.asarray(roi.spearman_with_mask(maps, masks))
  auc = np.asarray(roi.roc_auc_with_mask(maps, masks))
  for i in range(shape[0]):
    rho = scipy.stats.spearmanr(maps[i].ravel(), masks[i].ravel()).statistic
    np.testing.assert_allclose(spearman[i], rho, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(auc[i], roc_auc_score(masks[i].ravel(), maps[i].ravel()),
                               rtol=1e-5, atol=1e-6)


def test_rank_metrics_of_the_two_level_map_and_their_nan_cases():
  maps, mask = square_roi_map()
  # The map is a monotone function of the mask: rank correlation 1, AUC 1.
  np.testing.assert_allclose(roi.spearman_with_mask(maps, mask), [1.0], rtol=1e-6)
  np.testing.assert_allclose(roi.roc_auc_with_mask(maps, mask), [1.0], rtol=1e-6)
  full, constant = np.ones_like(mask), np.full_like(maps, 0.5)
  assert np.isnan(roi.spearman_with_mask(maps, full)).all()
  assert np.isnan(roi.roc_auc_with_mask(maps, full)).all()
  assert np.isnan(roi.spearman_with_mask(constant, mask)).all()
  np.testing.assert_allclose(roi.roc_auc_with_mask(constant, mask), [0.5])  # all ties


def test_pointing_game_hit_miss_and_tolerance():
  maps = np.zeros((1, 7, 7), np.float32)
  maps[0, 2, 2] = maps[0, 5, 5] = 1.0  # tie: the first in row-major order, (2, 2), counts
  mask = np.zeros((1, 7, 7), bool)
  mask[0, 2, 4] = True
  assert [float(roi.pointing_game(maps, mask, tolerance)[0]) for tolerance in (0, 1, 2)] == [
      0.0, 0.0, 1.0]
  mask[0, 2, 2] = True
  assert float(roi.pointing_game(maps, mask)[0]) == 1.0
  only_second = np.zeros_like(mask)
  only_second[0, 5, 5] = True
  assert float(roi.pointing_game(maps, only_second)[0]) == 0.0
  assert np.isnan(roi.pointing_game(maps, np.zeros_like(mask))).all()


def test_relevance_mass_counts_positive_values_only():
  maps = np.float32([[[2.0, 1.0, -5.0], [1.0, -1.0, 0.0]]])
  mask = np.bool_([[[True, False, True], [False, False, False]]])
  # Positive mass: 2 inside the ROI (the -5 does not count) out of 2 + 1 + 1 = 4.
  np.testing.assert_allclose(roi.relevance_mass(maps, mask), [0.5])
  np.testing.assert_array_equal(roi.mass_fraction(maps, mask), roi.relevance_mass(maps, mask))
  assert np.isnan(roi.relevance_mass(-np.abs(maps), mask)).all()  # no positive mass


def test_relevance_rank_with_distinct_and_tied_values():
  maps = np.float32([[[5, 4, 3], [2, 1, 0]]])
  mask = np.bool_([[[True, False, False], [False, True, False]]])  # K = 2; top 2: 5 and 4
  np.testing.assert_allclose(roi.relevance_rank(maps, mask), [0.5])
  tied = np.float32([[[1, 1, 1], [1, 0, 0]]])
  first_two = np.bool_([[[True, True, False], [False, False, False]]])
  np.testing.assert_allclose(roi.relevance_rank(tied, first_two), [1.0])  # lower index first
  np.testing.assert_allclose(roi.relevance_rank(tied, first_two[:, ::-1, ::-1]), [0.0])
  assert np.isnan(roi.relevance_rank(maps, np.zeros_like(mask))).all()


def test_a_constant_map_has_no_maximum_order_or_mass():
  """An all-zero CAM got a pointing-game hit and a relevance rank from where its ROI lay (the
  first maximum, a stable sort): 1.0 and 0.44 with the ROI at the top-left, 0 elsewhere."""
  maps = np.zeros((2, 6, 6), np.float32)
  masks = np.zeros((2, 6, 6), bool)
  masks[0, :3, :3] = masks[1, 3:, 3:] = True
  out = roi.roi_metrics(maps, masks)
  for name in ("pointing_game", "relevance_rank", "relevance_mass", "spearman"):
    assert np.isnan(out[name]).all(), name
  np.testing.assert_allclose(out["roc_auc"], [0.5, 0.5])  # every pixel tied
  assert np.isfinite(out["dice"]).all()
  np.testing.assert_array_equal(roi.constant_maps(np.stack([maps[0], maps[0] + 1,
                                                            np.eye(6, dtype=np.float32)])),
                                [True, True, False])


def test_roi_metrics_batches_agree_with_one_batch_and_an_empty_mask_gives_nan():
  maps, masks = random_maps_with_ties(3, (5, 10, 10))
  masks[4] = False
  masks_uint8 = masks.astype(np.uint8) * 255
  whole = roi.roi_metrics(maps, masks_uint8, batch_size=5)
  batched = roi.roi_metrics(maps, masks_uint8, batch_size=2)
  assert tuple(whole) == roi.METRICS
  for name in roi.METRICS:
    assert batched[name].dtype == np.float64 and batched[name].shape == (5,)
    np.testing.assert_array_equal(batched[name], whole[name], err_msg=name)
  np.testing.assert_allclose(whole["spearman"], roi.spearman_with_mask(maps, masks), rtol=1e-6)
  np.testing.assert_array_equal(whole["dice"], roi.best_threshold_dice(maps, masks)["dice"])
  for name in roi.METRICS:
    assert np.isnan(whole[name][4]) and not np.isnan(whole[name][:4]).any(), name
  assert np.isnan(roi.dice_curve(maps[4:], masks[4:])).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_map_with_a_non_finite_value_gets_nan_for_every_metric(bad):
  # One bad pixel (a failed attribution) must not score: scipy's spearmanr gives NaN and
  # sklearn's roc_auc_score refuses such input; a number would be averaged in as a real one.
  rng = np.random.default_rng(3)
  maps = rng.uniform(0, 1, (3, 12, 12)).astype(np.float32)
  masks = rng.uniform(size=maps.shape) < 0.3
  maps[1, 5, 7] = bad
  whole = roi.roi_metrics(maps, masks)
  clean = roi.roi_metrics(maps[[0, 2]], masks[[0, 2]])
  for name in roi.METRICS:
    assert np.isnan(whole[name][1]), name
    np.testing.assert_array_equal(whole[name][[0, 2]], clean[name], err_msg=name)
  assert np.isnan(roi.dice_curve(maps[1:2], masks[1:2])).all()
  assert np.isnan(roi.mass_fraction(maps[1:2], masks[1:2])).all()


def test_agreement_warns_naming_the_examples_whose_maps_are_not_finite():
  rng = np.random.default_rng(4)
  maps = rng.uniform(0, 1, (4, 8, 8)).astype(np.float32)
  masks = rng.uniform(size=maps.shape) < 0.3
  maps[2, 0, 0] = np.nan
  data = {"gradcam.normalized": maps, "roi_mask": masks, "targets": np.zeros(4, np.int32),
          "label": np.zeros(4, np.int32), "logits": np.zeros((4, 2), np.float32),
          "index": np.arange(4), "id": np.array(["a", "b", "c", "d"])}
  with pytest.warns(RuntimeWarning, match=r"1 of 4 normalized gradcam maps .* \(examples c\)"):
    table = agreement.per_image_table(data, "gradcam", ["x", "y"])
  assert np.isnan(table["dice"][2]) and not np.isnan(table["dice"][[0, 1, 3]]).any()
  row = stats.summarise(table, "dice")[0]
  assert row["n"] == 3
