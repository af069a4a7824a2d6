"""jaxmm's training-mode BatchNorm (C++ reductions) against flax's nn.BatchNorm and the math:
values, statistics and running averages, gradients, jvp, grad of grad (in the parameters and in
x) and vmap, the threaded kernel path in float64, one value per channel, and a ResNet's
training step with either BatchNorm."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models import batch_norm, resnet
from tests.models.test_onednn_conv import require_onednn

EPS = 1e-5


@pytest.fixture(scope="module", autouse=True)
def loaded():
  require_onednn()


def close(a, b, tol=2e-4):
  for got, want in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def data(shape, seed=0, offset=0.5):
  rng = np.random.default_rng(seed)
  c = shape[-1]
  return (jnp.asarray(rng.normal(size=shape) * 2 + offset, jnp.float32),
          jnp.asarray(rng.normal(size=c), jnp.float32),
          jnp.asarray(rng.normal(size=c), jnp.float32),
          jnp.asarray(rng.normal(size=shape), jnp.float32))


def reference(x, scale, bias, relu):
  """Batch statistics in plain jnp, the way nn.BatchNorm computes them."""
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = jnp.maximum((x * x).mean(axes) - mean ** 2, 0.0)
  y = (x - mean) * jax.lax.rsqrt(var + EPS) * scale + bias
  return (jnp.maximum(y, 0.0) if relu else y), mean, var


def ours(relu):
  return lambda x, scale, bias: batch_norm.train_batch_norm(x, scale, bias, EPS, relu)


def theirs(relu):
  return lambda x, scale, bias: reference(x, scale, bias, relu)


def loss(f, g):
  """Reaches every output: y weighted by g, and the statistics."""
  def value(x, scale, bias):
    y, mean, var = f(x, scale, bias)
    return jnp.sum(y * g) + jnp.sum(mean * jnp.arange(mean.size)) - jnp.sum(var)
  return value


# (4, 9, 7, 5): one thread, C not a multiple of a vector; (8, 20, 20, 80): 256,000 values,
# the threaded path with rows in several blocks per thread.
SHAPES = [(4, 9, 7, 5), (8, 20, 20, 80)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_values_and_gradients_match_the_reference(shape, relu):
  x, scale, bias, g = data(shape)
  close(jax.jit(ours(relu))(x, scale, bias), theirs(relu)(x, scale, bias), 1e-5)
  grads = lambda f: jax.grad(loss(f, g), argnums=(0, 1, 2))(x, scale, bias)
  close(jax.jit(lambda: grads(ours(relu)))(), grads(theirs(relu)))


@pytest.mark.parametrize("relu", [False, True])
def test_jvp_grad_of_grad_and_vmap_match_the_reference(relu):
  x, scale, bias, g = data((3, 6, 5, 7), seed=1)
  tangents = data((3, 6, 5, 7), seed=2)[:3]
  close(jax.jit(lambda: jax.jvp(ours(relu), (x, scale, bias), tangents))(),
        jax.jvp(theirs(relu), (x, scale, bias), tangents))

  def penalty(f):  # an input-gradient penalty, differentiated in the parameters
    return lambda scale, bias: jnp.sum(jax.grad(lambda x: loss(f, g)(x, scale, bias))(x) ** 2)
  close(jax.jit(jax.grad(penalty(ours(relu)), argnums=(0, 1)))(scale, bias),
        jax.grad(penalty(theirs(relu)), argnums=(0, 1))(scale, bias), 2e-3)

  xs = jnp.stack([x, 3 * x - 1])  # each element its own batch statistics
  per = lambda f: jax.vmap(lambda x: jax.grad(loss(f, g), argnums=(0, 1))(x, scale, bias))
  close(jax.jit(per(ours(relu)))(xs), per(theirs(relu))(xs))
  close(jax.jit(jax.vmap(ours(relu), (0, None, None)))(xs, scale, bias),
        jax.vmap(theirs(relu), (0, None, None))(xs, scale, bias), 1e-5)


def flax_batch_norm(relu):
  """nn.BatchNorm in training mode (then nn.relu when relu), as a function of (x, scale, bias)."""
  def apply(x, scale, bias):
    c = x.shape[-1]
    variables = {"params": {"scale": scale, "bias": bias},
                 "batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)}}
    y = nn.BatchNorm(use_running_average=False, epsilon=EPS).apply(
        variables, x, mutable=["batch_stats"])[0]
    return nn.relu(y) if relu else y
  return apply


@pytest.mark.parametrize("relu", [False, True])
def test_second_and_third_derivatives_in_x_match_flax(relu):
  """The BatchNorm's input differentiated twice (hessian-vector products, an input-gradient
  penalty's gradient in x) and three times, against nn.BatchNorm: the batch statistics' own
  derivatives in x (the C++ moments) are part of each."""
  x, scale, bias, g = data((3, 6, 5, 7), seed=5)
  v = data((3, 6, 5, 7), seed=6)[0]
  f = lambda bn: lambda x: jnp.sum(jnp.sin(bn(x, scale, bias)) * g)
  mine = lambda x, scale, bias: ours(relu)(x, scale, bias)[0]
  hvp = lambda bn: lambda x: jax.jvp(jax.grad(f(bn)), (x,), (v,))[1]
  penalty_grad = lambda bn: jax.grad(lambda x: jnp.sum(jax.grad(f(bn))(x) ** 2))
  third = lambda bn: lambda x: jax.jvp(hvp(bn), (x,), (v,))[1]
  for derivative in (hvp, penalty_grad, third):
    close(jax.jit(derivative(mine))(x), derivative(flax_batch_norm(relu))(x), 1e-3)


def test_one_value_per_channel_gives_exactly_the_bias():
  """Batch 1 over a 1x1 map (a ResNet's last stage below 64 px): x - mean is exactly 0, so y is
  exactly bias, and the ReLU passes bias gradients only where bias > 0, as nn.relu after
  nn.BatchNorm does. x a + (bias - mean a), a = scale / sqrt(epsilon) ~ 949, left the rounding
  of x a (~1e5 here) in y: 1e-3 off here, and where XLA fuses x a + b into a multiply-add
  (outside the tests' -O0), noise around zero biases that flipped ReLU masks."""
  x = data((1, 1, 1, 8), seed=7)[0] * 50
  scale = jnp.full((8,), 3.0)
  bias = jnp.asarray([-1e-3, 0.0, 3e-3, 0.0, 0.3, -0.7, 1e-3, 1.1])
  for relu in (False, True):
    y, mean, var = jax.jit(ours(relu))(x, scale, bias)
    np.testing.assert_array_equal(y[0, 0, 0], jnp.maximum(bias, 0.0) if relu else bias)
    np.testing.assert_array_equal(mean, x[0, 0, 0])
    np.testing.assert_array_equal(var, 0.0)
    grads = lambda bn: jax.grad(lambda *v: jnp.sum(bn(*v)), argnums=(0, 1, 2))(x, scale, bias)
    mine = jax.jit(lambda: grads(lambda *v: ours(relu)(*v)[0]))()
    np.testing.assert_array_equal(mine[2], (bias > 0) if relu else jnp.ones(8))
    close(mine, grads(flax_batch_norm(relu)), 1e-6)


def test_kernels_against_float64():
  """The C++ sums in float64: a large mean (100) next to a unit spread, where single-pass float
  sums of x and x^2 (or of g x) would lose the variance (or the scale's gradient), and the
  ReLU's mask recomputed in the backward."""
  x, scale, bias, g = data((8, 20, 20, 80), seed=3, offset=100.0)
  y, mean, var = jax.jit(ours(True))(x, scale, bias)
  x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
  mean64, var64 = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
  np.testing.assert_allclose(mean, mean64, rtol=1e-6)
  np.testing.assert_allclose(var, var64, rtol=1e-5)
  inv = 1 / np.sqrt(np.asarray(var, np.float64) + EPS)
  a = np.asarray(scale, np.float64) * inv
  xhat = (x64 - np.asarray(mean, np.float64)) * inv
  g_pre = np.where(np.asarray(y) > 0, g64, 0.0)
  dx, dscale, dbias = jax.jit(jax.grad(lambda *v: jnp.sum(ours(True)(*v)[0] * g),
                                       argnums=(0, 1, 2)))(x, scale, bias)
  np.testing.assert_allclose(dbias, g_pre.sum((0, 1, 2)), rtol=3e-5, atol=1e-4)
  np.testing.assert_allclose(dscale, (g_pre * xhat).sum((0, 1, 2)), rtol=3e-5, atol=1e-4)
  m = x64.size // x64.shape[-1]
  sums = [np.asarray(v, np.float64) / m for v in (dbias, dscale)]
  dx64 = a * (g_pre - sums[0] - xhat * sums[1])
  np.testing.assert_allclose(dx, dx64, rtol=1e-3, atol=1e-5)
  assert np.allclose(xhat * np.asarray(scale, np.float64) + np.asarray(bias, np.float64) > 0,
                     np.asarray(y) > 0)


def test_module_has_flax_variables_and_training_updates():
  x = data((4, 6, 6, 8))[0]
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS)
  ours_bn = batch_norm.TrainBatchNorm(momentum=0.9, epsilon=EPS)
  v_flax, v_ours = (m.init(jax.random.key(0), x) for m in (flax_bn, ours_bn))
  assert jax.tree.structure(v_flax) == jax.tree.structure(v_ours)
  close(v_ours, v_flax, 0)
  variables = {"params": {"scale": jnp.linspace(0.5, 2, 8), "bias": jnp.linspace(-1, 1, 8)},
               "batch_stats": {"mean": jnp.full(8, 0.3), "var": jnp.full(8, 2.0)}}
  close(ours_bn.apply(variables, x, mutable=["batch_stats"]),
        flax_bn.apply(variables, x, mutable=["batch_stats"]), 1e-5)


def resnet_step(enabled: bool, monkeypatch):
  monkeypatch.setattr(batch_norm, "ENABLED", enabled)
  model = resnet.ResNetTiny(num_classes=3)
  x = data((4, 32, 32, 3), seed=4)[0]
  variables = model.init(jax.random.key(0), x, train=False)

  def step(params):
    logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"])
    return jnp.sum(jax.nn.log_softmax(logits[0])[:, 0]), updates

  f = jax.jit(jax.value_and_grad(step, has_aux=True))
  return f(variables["params"]), f.lower(variables["params"]).as_text()


def test_resnet_training_step_matches_flax_batch_norm(monkeypatch):
  """ResNetTiny's loss, parameter gradients and running averages with jaxmm's BatchNorm equal
  flax's, and its step runs the C++ kernels: moments in the forward, sums in the backward."""
  ours_out, ours_text = resnet_step(True, monkeypatch)
  flax_out, flax_text = resnet_step(False, monkeypatch)
  close(ours_out, flax_out, 1e-3)
  for target in ("jaxmm_bn_moments", "jaxmm_bn_grad_sums"):
    assert ours_text.count(target) > 0 and target not in flax_text


def test_other_dtypes_and_eval_keep_flax_batch_norm():
  x = jnp.ones((2, 4, 4, 8), jnp.bfloat16)
  assert not batch_norm.usable(x) and batch_norm.usable(x.astype(jnp.float32))
  model = resnet.ResNetTiny(num_classes=2)
  x32 = data((2, 32, 32, 3))[0]
  variables = model.init(jax.random.key(0), x32, train=False)
  text = jax.jit(lambda v: model.apply(v, x32, train=False)).lower(variables).as_text()
  assert "jaxmm_bn" not in text
