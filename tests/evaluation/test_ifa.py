"""Integrated feature analysis (paper 003) against closed forms on a model linear in its
features, and its statistics against hand-made examples and SciPy."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxmm.evaluation import ifa, ifa_dataset
from jaxmm.saliency import model_fns

S, CIN, F, K = 4, 2, 4, 3
P = np.array([[1.0, -0.5, 0.3, 2.0], [0.2, 1.0, -1.0, 0.5]], np.float32)  # fixed 1x1 conv
Q = np.array([0.5, 1.0, 0.0, -0.2], np.float32)
W = np.array([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0], [-1.5, 0.3, 2.0], [0.7, 0.2, -0.4]],
             np.float32)  # [F, K]
B = np.array([0.1, -0.2, 0.3], np.float32)


class FeatureNet(nn.Module):
  """A = x P + q (marked "features"); logits = mean_hw(A^power) W + b. With power=1,
  d logit_c / d A = W[f, c] / (h w) and the Grad-CAM contribution is W[f, c] mean_hw A_f."""
  power: int = 1

  @nn.compact
  def __call__(self, x):
    a = self.perturb("features", x @ jnp.asarray(P) + jnp.asarray(Q))
    return jnp.mean(a ** self.power, axis=(1, 2)) @ jnp.asarray(W) + jnp.asarray(B), {
        "features": a}


def images(seed, n):
  return jax.random.normal(jax.random.key(seed), (n, S, S, CIN))


def mean_features(x):
  return (np.asarray(x, np.float64) @ P + Q).mean((1, 2))  # [N, F]


@pytest.fixture(scope="module")
def linear():
  return model_fns.linen_apply_fn(FeatureNet(), {})


@pytest.fixture(scope="module")
def quadratic():
  return model_fns.linen_apply_fn(FeatureNet(power=2), {})


def accumulate(apply, batches, per_class):
  step = jax.jit(functools.partial(ifa.importance_step, apply, layer="features",
                                   method="gradcam", num_classes=K, per_class=per_class))
  acc = ifa.ImportanceAccumulator()
  for x, labels, valid in batches:
    acc.add(step(x, labels, valid))
  return acc.finalize()


@pytest.fixture(scope="module")
def batches():
  """Two batches of different sizes; the last row of the second is padding (invalid) with
  huge activations and an out-of-range label, which must be ignored."""
  x1, x2 = images(1, 5), images(2, 4)
  x2 = x2.at[-1].set(1e6)
  labels1, labels2 = np.array([0, 2, 0, 1, 2]), np.array([1, 0, 2, -1])
  valid1, valid2 = np.ones(5, bool), np.array([True, True, True, False])
  xs = np.concatenate([mean_features(x1), mean_features(x2)[:3]])
  labels = np.concatenate([labels1, labels2[:3]])
  return [(x1, labels1, valid1), (x2, labels2, valid2)], xs, labels


def test_importance_matrices_match_the_closed_form(linear, batches):
  data, xs, labels = batches
  out = accumulate(linear, data, per_class=True)
  np.testing.assert_allclose(out["eq3"], W * xs.mean(0)[:, None], rtol=1e-5, atol=1e-6)
  eq4 = np.stack([W[:, c] * xs[labels == c].mean(0) for c in range(K)], 1)
  np.testing.assert_allclose(out["eq4"], eq4, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["class_counts"], np.bincount(labels, minlength=K))
  assert out["count"] == 8


def test_true_class_shortcut_gives_the_same_eq4(quadratic, batches):
  data, _, _ = batches
  full = accumulate(quadratic, data, per_class=True)
  shortcut = accumulate(quadratic, data, per_class=False)
  assert "eq3" not in shortcut
  np.testing.assert_allclose(shortcut["eq4"], full["eq4"], rtol=1e-5, atol=1e-6)


def test_eq4_equals_eq3_on_a_single_class_split(quadratic):
  x = images(3, 6)
  out = accumulate(quadratic, [(x, np.full(6, 1), np.ones(6, bool))], per_class=True)
  np.testing.assert_allclose(out["eq4"][:, 1], out["eq3"][:, 1], rtol=1e-6)
  assert np.isnan(out["eq4"][:, [0, 2]]).all()  # absent classes


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_class_contributions_equal_single_class_calls(quadratic, method):
  x = images(4, 3)
  out = ifa.class_contributions(quadratic, x, "features", method, classes=[2, 0])
  assert out["contributions"].shape == (3, F, 2) and out["raw"].shape == (3, 2, S, S)
  for i, c in enumerate([2, 0]):
    one = ifa.target_contributions(quadratic, x, "features", jnp.full(3, c), method)
    np.testing.assert_allclose(out["contributions"][..., i], one["contributions"], rtol=1e-5)
    np.testing.assert_allclose(out["raw"][:, i], one["raw"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["weights"][:, i], one["weights"], rtol=1e-5, atol=1e-7)
  # Contributions summed over features == the raw map summed over space.
  np.testing.assert_allclose(out["contributions"].sum(1), out["raw"].sum((2, 3)), rtol=1e-5)
  chunked = ifa.class_contributions(quadratic, x, "features", method, chunk_size=2)
  full = ifa.class_contributions(quadratic, x, "features", method)
  np.testing.assert_allclose(chunked["contributions"], full["contributions"], rtol=1e-6)


def test_tanh_scaling_maps_p10_and_p90_exactly():
  p10, p90 = 0.5, 3.0
  alpha, beta = ifa.tanh_scaling(p10, p90)
  np.testing.assert_allclose(np.tanh(alpha * np.array([p10, p90]) + beta), [0.1, 0.9],
                             atol=1e-12)
  # The beta printed under Eq. 2 (reading its P10 - P00 as P90 - P10) misses P10.
  typo_beta = (p90 * math.atanh(0.9) - p10 * math.atanh(0.1)) / (p90 - p10)
  assert abs(math.tanh(alpha * p10 + typo_beta) - 0.1) > 0.1
  scaled = np.asarray(ifa.s_cam(jnp.array([-5.0, -1.0, 0.0, p10]), alpha, beta))
  assert scaled[0] < scaled[1] < 0 and np.all(np.diff(scaled) > 0)  # sign and order kept
  with pytest.raises(ValueError, match="P90 must exceed P10"):
    ifa.tanh_scaling(1.0, 1.0)


def test_scaling_stats_round_trip_through_json():
  values = np.arange(101, dtype=np.float64)
  statistics = ifa.activation_statistics(values)
  assert (statistics["p10"], statistics["p90"], statistics["mean"]) == (10.0, 90.0, 50.0)
  assert (statistics["min"], statistics["max"], statistics["count"]) == (0.0, 100.0, 101.0)
  scaling = ifa.ScalingStats.from_statistics({0: statistics, 2: {"p10": -1.0, "p90": 1.0}},
                                             method="gradcam", layer="features")
  again = ifa.ScalingStats.from_json(scaling.to_json())
  assert again == scaling
  raw = jnp.array([[10.0, 90.0], [-1.0, 1.0]])
  np.testing.assert_allclose(again.scale(raw, np.array([0, 2])), [[0.1, 0.9], [0.1, 0.9]],
                             atol=1e-6)


def test_fs_cam_with_all_or_one_feature(quadratic):
  x = images(5, 2)
  out = ifa.target_contributions(quadratic, x, "features", jnp.array([0, 2]))
  a, w = out["activations"], out["weights"]
  np.testing.assert_allclose(ifa.fs_cam(a, w, jnp.ones(F, bool)), out["raw"], rtol=1e-6)
  one = ifa.fs_cam(a, w, ifa.feature_set_mask([2], F))
  np.testing.assert_allclose(one, w[:, None, None, 2] * a[..., 2], rtol=1e-6)
  per_example = ifa.fs_cam(a, w, jnp.array([[True] * F, [False] * F]))
  np.testing.assert_allclose(per_example[0], out["raw"][0], rtol=1e-6)
  np.testing.assert_array_equal(per_example[1], 0.0)


def test_principal_features_by_column_and_by_row_max():
  importance = jnp.array([[1.0, 0.0, np.nan], [3.0, -1.0, np.nan], [2.0, 5.0, np.nan],
                          [0.0, 4.0, np.nan]])
  mask = np.asarray(ifa.principal_features(importance, 0.4))  # ceil(1.6) = 2 per class
  np.testing.assert_array_equal(mask, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
  np.testing.assert_array_equal(ifa.principal_features(importance, 0.01).sum(0), [1, 1, 0])
  np.testing.assert_array_equal(ifa.ranked_principal_features(importance, 0.5),
                                [False, False, True, True])  # row max 1, 3, 5, 4


def test_a_class_absent_from_the_reference_split_has_no_principal_features_or_fs_cams():
  # Class 2 never occurs in the reference split: its Eq. 4 column is all NaN.
  eq4 = np.array([[1.0, 0.0, np.nan], [3.0, -1.0, np.nan], [2.0, 5.0, np.nan],
                  [0.0, 4.0, np.nan]])
  reference = {"importance": {"all": {"eq4": eq4}},
               "statistics": {c: {"p10": -1.0, "p90": 1.0} for c in range(K)}}
  selection, _ = ifa_dataset.make_selection(reference, (0.25, 0.5))
  np.testing.assert_array_equal(selection.principal[:, :, 2], False)  # not channels 0..k-1
  np.testing.assert_array_equal(selection.principal[1],
                                ifa.principal_features(jnp.asarray(eq4), 0.5))
  np.testing.assert_array_equal(selection.ranked[1], [False, False, True, True])
  # The evaluation pass (a stand-in step of fixed outputs) leaves the FS-CAMs of examples
  # whose selected class is 2 undefined (NaN) and says so; the CAM's are kept.
  targets, h = np.array([0, 2, 1, 2]), 2
  def step(variables, batch, arrays):
    n = len(batch["label"])
    return {"logits": np.zeros((n, K)), "contributions": np.ones((n, F, K)),
            "raw": np.ones((n, h, h)), "target": batch["label"],
            "fs_raw": np.ones((2, n, h, h)), "masked_logits": np.zeros((4, n, K)),
            "masked_probability": np.full((3, n), 0.5)}
  batch = {"label": targets, "valid": np.ones(4, bool)}
  per = ifa_dataset.evaluation_pass(step, None, [batch], K, selection)["per_example"]
  defined = np.array([True, False, True, False])
  np.testing.assert_array_equal(per["principal_defined"], [defined, defined])
  assert np.isnan(per["fs_raw"][:, ~defined]).all() and (per["fs_raw"][:, defined] == 1).all()
  np.testing.assert_array_equal(per["masked_probability"][0], 0.5)
  assert np.isnan(per["masked_probability"][1:, ~defined]).all()
  np.testing.assert_array_equal(per["masked_probability"][1:, defined], 0.5)


def test_masked_logits_block_the_removed_feature(linear):
  x = images(6, 3)
  logits, _ = linear(x)
  np.testing.assert_allclose(ifa.masked_logits(linear, x, "features", jnp.ones(F, bool)),
                             logits, rtol=1e-6)
  keep = ifa.feature_set_mask([0, 1, 3], F)
  expected = np.asarray(logits) - mean_features(x)[:, 2:3] * W[2]
  np.testing.assert_allclose(ifa.masked_logits(linear, x, "features", keep), expected,
                             rtol=1e-5, atol=1e-5)


def test_average_drop_and_increase_on_hand_examples():
  f = lambda v: jnp.stack([v.sum((1, 2, 3)), jnp.zeros(v.shape[0])], -1)
  x = jnp.ones((2, 2, 2, 1))
  same = ifa.average_drop_increase(f, x, jnp.ones((2, 2, 2)), jnp.array([0, 1]))
  assert float(same["average_drop"]) == 0.0 and float(same["average_increase"]) == 0.0
  out = ifa.average_drop_increase(f, x, jnp.full((2, 2, 2), 0.5), jnp.array([0, 1]))
  y0, o0 = 1 / (1 + math.exp(-4)), 1 / (1 + math.exp(-2))  # logits [4, 0] -> [2, 0]
  np.testing.assert_allclose(out["drop"], [(y0 - o0) / y0, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(out["increase"], [False, True])
  np.testing.assert_allclose(out["average_drop"], 50 * (y0 - o0) / y0, rtol=1e-6)
  np.testing.assert_allclose(out["average_increase"], 50.0)


def test_consistency_picks_pearson_or_spearman():
  rng = np.random.default_rng(0)
  x = rng.normal(size=200)
  linear = ifa.consistency(2 * x + 1, x)
  assert linear["method"] == "pearson" and linear["normality_test"] == "shapiro"
  np.testing.assert_allclose(linear["r"], 1.0, atol=1e-9)
  heavy = np.exp(3 * rng.normal(size=200))
  y = np.log(heavy) ** 3
  result = ifa.consistency(heavy, y)
  assert result["method"] == "spearman" and not result["normal_cam"]
  np.testing.assert_allclose(result["r"], stats.spearmanr(heavy, y).statistic)
  assert ifa.consistency(rng.normal(size=6000), rng.normal(size=6000))["normality_test"] == (
      "normaltest")
  assert math.isnan(ifa.consistency([1.0, 2.0], [1.0, 3.0])["r"])
  np.testing.assert_allclose(ifa.cam_sum(jnp.ones((2, 3, 4))), [12.0, 12.0])


def test_consistency_of_a_constant_sample_is_undefined_with_a_note():
  """Shapiro-Wilk calls a constant sample normal (p = 1), so Pearson was picked and its NaN r
  was written as a "pearson" row with no note."""
  for x, y, which in ((np.ones(10), np.arange(10.0), "cam_sums"),
                      (np.arange(10.0), np.full(10, 3.0), "logits")):
    result = ifa.consistency(x, y)
    assert result["method"] is None and math.isnan(result["r"]) and math.isnan(result["p"])
    assert result["note"] == f"constant {which}: no correlation is defined"
  with pytest.raises(ValueError, match="logits has 1 non-finite values of 4"):
    ifa.consistency(np.arange(4.0), [1.0, np.nan, 2.0, 3.0])


def test_importance_distance():
  im = np.array([[1.0, 2.0, np.nan], [3.0, -1.0, np.nan], [0.5, 4.0, np.nan]])
  same = ifa.importance_distance(im, im)
  assert same["relative_l2"] == 0.0 and same["columns"] == 2
  np.testing.assert_allclose([same["pearson"], same["mean_cosine"]], [1.0, 1.0])
  np.testing.assert_array_equal(same["max_abs_centered"][:2], 0.0)
  shifted = ifa.importance_distance(im, im + np.array([1.0, -2.0, 0.0]))
  assert shifted["relative_l2"] > 0
  np.testing.assert_allclose(shifted["max_abs_centered"][:2], 0.0, atol=1e-12)
  assert np.isnan(shifted["max_abs_centered"][2])


@pytest.mark.parametrize("size,grid", [(224, 7), (64, 5), (10, 4)])
def test_pooled_mask_is_the_area_fraction_of_each_cell(size, grid):
  # Reference: each pixel split into grid x grid sub-pixels, so the cells are whole blocks
  # of size x size sub-pixels whose mean is the exact area fraction.
  rng = np.random.default_rng(size)
  mask = rng.uniform(size=(2, size, size)) < 0.2
  mask[0, :size // grid, :size // grid] = True
  fine = mask.repeat(grid, 1).repeat(grid, 2)
  want = fine.reshape(2, grid, size, grid, size).mean((2, 4))
  got = np.asarray(ifa_dataset.pooled_mask(jnp.asarray(mask), (grid, grid)))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_pooled_mask_keeps_a_cell_sized_region_in_its_cell():
  mask = np.zeros((1, 224, 224), bool)
  mask[0, 96:128, 96:128] = True
  want = np.zeros((1, 7, 7))
  want[0, 3, 3] = 1
  np.testing.assert_array_equal(ifa_dataset.pooled_mask(jnp.asarray(mask), (7, 7)), want)
