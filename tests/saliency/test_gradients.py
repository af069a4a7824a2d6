"""Analytic tests of the gradient methods: closed forms, integration rules, chunking, and IG
completeness on a small ResNet."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models.resnet import ResNetTiny
from jaxmm.saliency import gradients

N, D = 3, 5
TARGETS = jnp.zeros(N, jnp.int32)


def as_logits(fn):
  """A scalar function of each example, as logits [N, 1]."""
  return lambda x: fn(x)[:, None]


@pytest.fixture
def x():
  return jax.random.normal(jax.random.key(0), (N, D))


@pytest.fixture
def baseline():
  return jax.random.normal(jax.random.key(1), (N, D))


def test_vanilla_gradient_and_gradient_x_input_of_a_linear_function(x):
  w = jnp.arange(1.0, D + 1)
  f = as_logits(lambda v: v @ w)
  np.testing.assert_allclose(gradients.vanilla_gradient(f, x, TARGETS), np.tile(w, (N, 1)))
  np.testing.assert_allclose(gradients.gradient_x_input(f, x, TARGETS), x * w, rtol=1e-6)


@pytest.mark.parametrize("rule", gradients.RULES)
def test_ig_of_a_linear_function_is_exact_for_every_rule(x, baseline, rule):
  w = jnp.linspace(-2.0, 3.0, D)
  f = as_logits(lambda v: v @ w + 0.5)
  ig = gradients.integrated_gradients(f, x, TARGETS, baseline=baseline, steps=7, rule=rule)
  np.testing.assert_allclose(ig, (x - baseline) * w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_ig_of_a_quadratic_is_exact_for_rules_exact_on_linear_integrands(x, baseline, rule):
  a = jnp.linspace(0.5, 2.0, D)
  f = as_logits(lambda v: jnp.sum(a * v ** 2, axis=1))
  ig = gradients.integrated_gradients(f, x, TARGETS, baseline=baseline, steps=4, rule=rule)
  np.testing.assert_allclose(ig, a * (x ** 2 - baseline ** 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule,mean_alpha", [("riemann_left", lambda m: (m - 1) / (2 * m)),
                                             ("riemann_right", lambda m: (m + 1) / (2 * m))])
def test_one_sided_riemann_rules_match_their_closed_form_on_a_quadratic(x, baseline, rule,
                                                                        mean_alpha):
  m, a = 5, 1.5
  f = as_logits(lambda v: jnp.sum(a * v ** 2, axis=1))
  ig = gradients.integrated_gradients(f, x, TARGETS, baseline=baseline, steps=m, rule=rule)
  d = x - baseline
  np.testing.assert_allclose(ig, d * 2 * a * (baseline + mean_alpha(m) * d), rtol=1e-5,
                             atol=1e-5)


def test_ig_of_a_product_splits_it_in_halves_from_a_zero_baseline():
  x = jnp.array([[2.0, 3.0], [-1.0, 4.0]])
  f = as_logits(lambda v: v[:, 0] * v[:, 1])
  ig = gradients.integrated_gradients(f, x, jnp.zeros(2, jnp.int32), steps=3)
  np.testing.assert_allclose(ig, np.array([[3.0, 3.0], [-2.0, -2.0]]), rtol=1e-6)


def test_targets_pick_each_examples_class_and_pytree_inputs_work():
  w = jnp.array([[1.0, -1.0], [2.0, 0.5]])  # [D=2, K=2]
  f = lambda inputs: inputs["a"] @ w + inputs["b"]
  x = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([[1.0, 1.0], [2.0, 2.0]])}
  ig = gradients.integrated_gradients(f, x, jnp.array([0, 1]), steps=2)
  np.testing.assert_allclose(ig["a"], np.array([[1.0, 4.0], [-3.0, 2.0]]), rtol=1e-6)
  np.testing.assert_allclose(ig["b"], np.array([[1.0, 0.0], [0.0, 2.0]]), rtol=1e-6)


def test_a_target_outside_the_classes_is_refused_or_gives_nan_not_another_class():
  w = jnp.array([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]])  # [D=2, K=3]
  f = lambda v: v @ w
  x = jnp.ones((2, 2))
  for bad in (5, -1):  # a gather clamped 5 (an all-zero map) and wrapped -1 (class 2)
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 3\)"):
      gradients.vanilla_gradient(f, x, jnp.array([0, bad]))
    # Inside jit the targets are traced: that example's map is NaN, the other one exact.
    out = jax.jit(functools.partial(gradients.vanilla_gradient, f))(x, jnp.array([0, bad]))
    np.testing.assert_allclose(out[0], w[:, 0])
    assert np.isnan(np.asarray(out[1])).all()


def test_path_alphas_weights_sum_to_one_and_trapezoid_halves_the_ends():
  for rule in gradients.RULES:
    alphas, weights = gradients.path_alphas(10, rule)
    assert alphas.shape == weights.shape == (10,)
    assert abs(weights.sum() - 1) < 1e-6 and alphas.min() >= 0 and alphas.max() <= 1
  alphas, weights = gradients.path_alphas(5, "riemann_trapezoid")
  np.testing.assert_allclose(alphas, [0, .25, .5, .75, 1])
  np.testing.assert_allclose(weights, [.125, .25, .25, .25, .125])
  with pytest.raises(ValueError, match="unknown integration rule 'simpson'"):
    gradients.path_alphas(5, "simpson")


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50])
def test_ig_does_not_depend_on_the_chunk_size(x, chunk_size):
  f = as_logits(lambda v: jnp.sum(jnp.sin(v) * v, axis=1))
  ig = gradients.integrated_gradients(f, x, TARGETS, steps=7, chunk_size=chunk_size)
  reference = gradients.integrated_gradients(f, x, TARGETS, steps=7, chunk_size=7)
  np.testing.assert_allclose(ig, reference, rtol=1e-5, atol=1e-6)


def test_ig_completeness_within_one_percent_on_a_small_resnet():
  model = ResNetTiny(num_classes=3, width=8)
  images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
  variables = model.init(jax.random.key(3), images, train=False)
  f = lambda v: model.apply(variables, v, train=False)[0]
  targets = jnp.argmax(f(images), -1)
  ig_fn = jax.jit(functools.partial(gradients.integrated_gradients, f, steps=64, chunk_size=16))
  ig = ig_fn(images, targets)
  gap = gradients.completeness_gap(f, images, None, targets, ig)
  assert np.all(np.abs(gap["score_difference"]) > 1e-3)
  assert np.all(gap["relative_gap"] < 0.01), gap
