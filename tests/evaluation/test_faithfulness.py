"""Analytic tests of deletion / insertion curves on a linear two-class model, whose target
probability is sigmoid(sum w * x) so every curve point has a closed form."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from jaxmm.evaluation import faithfulness

N, H, W, C = 3, 4, 4, 2
STEPS = 8  # 16 pixels: 2 more per step
TARGETS = jnp.ones(N, jnp.int32)


@pytest.fixture(scope="module")
def problem():
  """Images x, weights w, the linear model f and the true attribution map sum_c w * x."""
  x = jax.random.normal(jax.random.key(0), (N, H, W, C))
  w = jax.random.normal(jax.random.key(1), (H, W, C))
  f = lambda images: jnp.stack([jnp.zeros(images.shape[0]),
                                jnp.sum(images * w, axis=(1, 2, 3))], axis=-1)
  return x, w, f, jnp.sum(w * x, axis=-1)


def sigmoid(v):
  return 1 / (1 + np.exp(-v))


def expected_curve(contributions, baseline_contributions, maps, counts, mode):
  """Closed form: sigmoid of the summed per-pixel contributions, the first `count` pixels of
  the map's order taking the baseline's (deletion) or the image's (insertion) contribution."""
  n = contributions.shape[0]
  order = np.argsort(-np.asarray(maps).reshape(n, -1), axis=-1, kind="stable")
  x_c = np.take_along_axis(np.asarray(contributions).reshape(n, -1), order, axis=1)
  b_c = np.take_along_axis(np.asarray(baseline_contributions).reshape(n, -1), order, axis=1)
  first, rest = (b_c, x_c) if mode == "deletion" else (x_c, b_c)
  return np.stack([sigmoid(first[:, :m].sum(1) + rest[:, m:].sum(1)) for m in counts], axis=1)


def test_pixel_order_is_decreasing_with_stable_ties():
  maps = jnp.array([[[1.0, 3.0], [3.0, 0.0]], [[0.0, 0.0], [-1.0, 2.0]]])
  np.testing.assert_array_equal(faithfulness.pixel_order(maps), [[1, 2, 0, 3], [3, 0, 1, 2]])


def test_perturbed_counts_round_half_up():
  np.testing.assert_array_equal(faithfulness.perturbed_counts(16, 5), [0, 3, 6, 10, 13, 16])
  np.testing.assert_array_equal(faithfulness.perturbed_counts(4, 8),
                                [0, 1, 1, 2, 2, 3, 3, 4, 4])


@pytest.mark.parametrize("mode", faithfulness.MODES)
def test_curve_values_equal_the_sigmoid_of_the_remaining_sum(problem, mode):
  x, w, f, maps = problem
  out = faithfulness.perturbation_curve(f, x, maps, TARGETS, mode=mode, steps=STEPS)
  counts = np.arange(0, 17, 2)
  np.testing.assert_allclose(out["fractions"], counts / 16)
  expected = expected_curve(maps, jnp.zeros_like(maps), maps, counts, mode)
  np.testing.assert_allclose(out["curve"], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["auc"], np.trapezoid(expected, counts / 16, axis=1),
                             rtol=1e-5)
  # Deletion ends, and insertion starts, at the baseline's probability sigmoid(0).
  np.testing.assert_allclose(out["curve"][:, -1 if mode == "deletion" else 0], 0.5)


def test_true_attribution_beats_random_and_reversed_orders(problem):
  x, _, f, maps = problem
  true = faithfulness.deletion_insertion(f, x, maps, TARGETS, steps=STEPS)
  reversed_ = faithfulness.deletion_insertion(f, x, -maps, TARGETS, steps=STEPS)
  random = faithfulness.random_order_auc(f, x, TARGETS, jax.random.key(2), num_orders=4,
                                         steps=STEPS)
  assert random["deletion"].shape == (N, STEPS + 1)
  assert np.all(true["deletion_auc"] < random["deletion_auc"])
  assert np.all(true["deletion_auc"] < reversed_["deletion_auc"])
  assert np.all(true["insertion_auc"] > random["insertion_auc"])
  assert np.all(true["insertion_auc"] > reversed_["insertion_auc"])
  # For a linear model, taking pixels most-positive first is the best order at every step.
  assert np.all(true["deletion"] <= reversed_["deletion"] + 1e-6)
  assert np.all(true["insertion"] >= reversed_["insertion"] - 1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_chunk_size_does_not_change_the_curves(problem, chunk_size):
  x, _, f, maps = problem
  reference = faithfulness.deletion_insertion(f, x, maps, TARGETS, steps=STEPS, chunk_size=5)
  out = faithfulness.deletion_insertion(f, x, maps, TARGETS, steps=STEPS, chunk_size=chunk_size)
  for key in reference:
    np.testing.assert_allclose(out[key], reference[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["per_channel", "image"])
def test_baselines_per_channel_and_per_image(problem, kind):
  x, w, f, maps = problem
  baseline = (jnp.array([0.7, -1.3]) if kind == "per_channel"
              else jax.random.normal(jax.random.key(3), x.shape))
  b_contributions = jnp.sum(w * jnp.broadcast_to(baseline, x.shape), axis=-1)
  for mode in faithfulness.MODES:
    out = faithfulness.perturbation_curve(f, x, maps, TARGETS, mode=mode, steps=STEPS,
                                          baseline=baseline)
    expected = expected_curve(maps, b_contributions, maps, np.arange(0, 17, 2), mode)
    np.testing.assert_allclose(out["curve"], expected, rtol=1e-5, atol=1e-6)


def test_multilabel_sigmoid_score_and_jit(problem):
  """A one-logit multilabel model gives sigmoid(sum w x) too; jit with static options."""
  x, w, f, maps = problem
  one_logit = lambda images: f(images)[:, 1:]
  curve = jax.jit(functools.partial(faithfulness.perturbation_curve, one_logit, steps=5,
                                    multilabel=True, chunk_size=2))
  out = curve(x, maps, jnp.zeros(N, jnp.int32))
  expected = expected_curve(maps, jnp.zeros_like(maps), maps, [0, 3, 6, 10, 13, 16], "deletion")
  np.testing.assert_allclose(out["curve"], expected, rtol=1e-5, atol=1e-6)


def test_blurred_baseline_keeps_constants_and_matches_scipy():
  constant = jnp.broadcast_to(jnp.array([0.25, -2.0, 3.0]), (2, 9, 7, 3))
  np.testing.assert_allclose(faithfulness.blurred_baseline(constant, 1.5), constant, rtol=1e-6)
  x = jax.random.normal(jax.random.key(4), (2, 12, 10, 3))
  expected = scipy.ndimage.gaussian_filter(np.asarray(x, np.float64), sigma=(0, 1.2, 1.2, 0),
                                           mode="reflect", truncate=4.0)
  np.testing.assert_allclose(faithfulness.blurred_baseline(x, 1.2), expected, atol=1e-5)
  np.testing.assert_array_equal(faithfulness.blurred_baseline(x, 0.0), x)


def test_invalid_arguments_raise(problem):
  x, _, f, maps = problem
  with pytest.raises(ValueError, match="valid modes"):
    faithfulness.perturbation_curve(f, x, maps, TARGETS, mode="erase")
  with pytest.raises(ValueError, match="maps must be"):
    faithfulness.perturbation_curve(f, x, maps[:, :2], TARGETS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_map_with_a_non_finite_value_gets_nan_curves_and_aucs(problem, bad):
  # argsort puts NaN first (and infinities first or last), so such a map used to get a finite,
  # plausible curve that was averaged in as a real one; the other maps' curves are unchanged.
  x, _, f, maps = problem
  broken = maps.at[1, 2, 3].set(bad)
  out = faithfulness.deletion_insertion(f, x, broken, TARGETS, steps=STEPS)
  clean = faithfulness.deletion_insertion(f, x, maps, TARGETS, steps=STEPS)
  for key in ("deletion", "insertion", "deletion_auc", "insertion_auc"):
    assert np.isnan(out[key][1]).all(), key
    np.testing.assert_array_equal(out[key][::2], clean[key][::2], err_msg=key)
  np.testing.assert_array_equal(faithfulness.nonfinite_maps(broken), [False, True, False])
  all_nan = jnp.full_like(maps, jnp.nan)
  assert np.isnan(faithfulness.perturbation_curve(f, x, all_nan, TARGETS, steps=STEPS)["auc"]).all()


def test_a_constant_map_gets_nan_curves_and_aucs(problem):
  # No pixel order: its row-major ranks had given a plausible curve (AUCs 0.958 / 0.905).
  x, _, f, maps = problem
  flat = maps.at[1].set(0.0)
  out = faithfulness.deletion_insertion(f, x, flat, TARGETS, steps=STEPS)
  clean = faithfulness.deletion_insertion(f, x, maps, TARGETS, steps=STEPS)
  for key in ("deletion", "insertion", "deletion_auc", "insertion_auc"):
    assert np.isnan(out[key][1]).all(), key
    np.testing.assert_array_equal(out[key][::2], clean[key][::2], err_msg=key)


def test_blurred_baseline_defaults_to_rise_sigma():
  x = jax.random.normal(jax.random.key(4), (1, 12, 12, 2))
  np.testing.assert_array_equal(faithfulness.blurred_baseline(x),
                                faithfulness.blurred_baseline(x, faithfulness.RISE_BLUR_SIGMA))
  assert faithfulness.RISE_BLUR_SIGMA == 5.0
