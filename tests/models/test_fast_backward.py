"""The fast-backward strided conv and max pool equal lax's values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmm.models import fast_backward

NHWC = fast_backward.NHWC


@pytest.mark.parametrize("kernel,stride,size,cin", [(7, 2, 32, 3), (3, 2, 15, 4), (1, 2, 16, 5),
                                                     (5, 3, 17, 2), (3, 2, 16, 1)])
def test_strided_conv_values_and_both_gradients_match_lax(kernel, stride, size, cin):
  rng = np.random.default_rng(kernel + size)
  x = jnp.asarray(rng.normal(size=(2, size, size + 1, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, cin, 6)), jnp.float32)
  pad = ((kernel // 2, kernel // 2),) * 2
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), pad,
                                              dimension_numbers=NHWC)
  ours = lambda x, w: fast_backward.strided_conv(x, w, stride, pad)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.normal(size=ref(x, w).shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g)
  dx, dw = jax.grad(loss(ours), (0, 1))(x, w)
  dx_ref, dw_ref = jax.grad(loss(ref), (0, 1))(x, w)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


def test_flax_conv_routes_strided_convs_through_the_custom_gradient(monkeypatch):
  """Without oneDNN (off here; also on GPU and in bfloat16)."""
  import flax.linen as nn
  from jaxmm.models import onednn_conv
  monkeypatch.setenv(onednn_conv.ENV, "0")
  calls = []
  original = fast_backward.strided_conv
  monkeypatch.setattr(fast_backward, "strided_conv",
                      lambda *a: calls.append(a[2:]) or original(*a))
  x = jnp.ones((1, 8, 8, 2))
  for stride in (1, 2):
    layer = nn.Conv(4, (5, 5), stride, padding=1, use_bias=False,
                    conv_general_dilated=fast_backward.conv_general_dilated)
    plain = nn.Conv(4, (5, 5), stride, padding=1, use_bias=False)
    variables = plain.init(jax.random.key(0), x)
    np.testing.assert_allclose(layer.apply(variables, x), plain.apply(variables, x),
                               rtol=1e-6)
  assert calls == [(2, ((1, 1), (1, 1)))]


@pytest.mark.parametrize("window,stride,pad,size", [(3, 2, 1, 16), (3, 2, 1, 15), (2, 2, 0, 8),
                                                    (3, 1, 1, 7)])
def test_max_pool_values_and_gradient_match_lax_without_ties(window, stride, pad, size):
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.permutation(2 * size * size * 3).reshape(2, size, size, 3), jnp.float32)
  ref = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                                    (1, stride, stride, 1),
                                    ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ours = lambda x: fast_backward.max_pool(x, window, stride, (pad, pad))
  np.testing.assert_array_equal(ours(x), ref(x))
  g = jnp.asarray(rng.normal(size=ref(x).shape), jnp.float32)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(ours(x) * g))(x),
                             jax.grad(lambda x: jnp.sum(ref(x) * g))(x), rtol=1e-6, atol=1e-6)


def test_xla_max_pool_gradient_of_a_fused_batch_norm_relu_goes_to_the_first_maximum(
    monkeypatch):
  """The XLA path (GPU/TPU, bfloat16, several devices, JAXMM_ONEDNN=0) with the pool's input
  made in the same jit, as in a ResNet stem: the first maximum was found by comparing each
  position with a separately computed pool value, which XLA rounded differently, so 119 of
  2,304 windows sent their gradient to their last position."""
  from jaxmm.models import onednn_conv
  monkeypatch.setenv(onednn_conv.ENV, "0")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 17, 16, 8)), jnp.float32)
  scale = jnp.asarray(1 + 0.3 * rng.normal(size=8), jnp.float32)
  bias = jnp.asarray(0.3 * rng.normal(size=8), jnp.float32)
  g = jnp.asarray(rng.normal(size=(4, 9, 8, 8)), jnp.float32)
  bn_relu = lambda x: jax.nn.relu((x - x.mean((0, 1, 2))) * lax.rsqrt(x.var((0, 1, 2)) + 1e-5)
                                  * scale + bias)
  ours = jax.jit(jax.grad(lambda x: jnp.sum(
      fast_backward.max_pool(bn_relu(x), 3, 2, (1, 1)) * g)))(x)
  # The reference: each window's cotangent at its first maximum (numpy), then bn_relu's VJP.
  y = np.pad(np.asarray(jax.jit(bn_relu)(x)), ((0, 0), (1, 1), (1, 1), (0, 0)),
             constant_values=-np.inf)
  dy = np.zeros_like(y)
  for n, p, q, c in np.ndindex(*g.shape):
    k = int(np.argmax(y[n, 2 * p:2 * p + 3, 2 * q:2 * q + 3, c]))
    dy[n, 2 * p + k // 3, 2 * q + k % 3, c] += g[n, p, q, c]
  expected = jax.vjp(bn_relu, x)[1](jnp.asarray(dy[:, 1:-1, 1:-1]))[0]
  np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_negative_padding_stays_with_xla(monkeypatch):
  from jaxmm.models import onednn_conv
  monkeypatch.setenv(onednn_conv.ENV, "0")
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 20, 19, 3)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(5, 5, 3, 4)), jnp.float32)
  kw = dict(window_strides=(2, 2), padding=((-1, -1), (0, 0)), dimension_numbers=fast_backward.NHWC)
  loss = lambda conv: (lambda x: jnp.sum(conv(x, w, **kw) ** 2))
  np.testing.assert_allclose(jax.grad(loss(fast_backward.conv_general_dilated))(x),
                             jax.grad(loss(lax.conv_general_dilated))(x), rtol=1e-4, atol=1e-4)


def test_max_pool_ties_send_the_gradient_to_one_maximum():
  x = jnp.zeros((1, 4, 4, 1))
  dx = jax.grad(lambda x: fast_backward.max_pool(x, 2, 2, (0, 0)).sum())(x)
  np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0, 1, 0], [0, 0, 0, 0]] * 2)


def test_disabled_runs_the_plain_lax_ops(monkeypatch):
  """ENABLED = False (the benchmark's --no-fast_backward): no jaxmm primitive is traced."""
  import flax.linen as nn
  from jaxmm.models import onednn_conv
  monkeypatch.setenv(onednn_conv.ENV, "0")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 8, 2)), jnp.float32)
  layer = nn.Conv(4, (5, 5), 2, padding=2, use_bias=False,
                  conv_general_dilated=fast_backward.conv_general_dilated)
  variables = layer.init(jax.random.key(0), x)
  loss = lambda x: jnp.sum(fast_backward.max_pool(layer.apply(variables, x), 3, 2, (1, 1)))
  assert "jaxmm_" in str(jax.make_jaxpr(jax.grad(loss))(x))
  monkeypatch.setattr(fast_backward, "ENABLED", False)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(x))
  assert "jaxmm_" not in jaxpr and "conv_general_dilated" in jaxpr, jaxpr


@pytest.mark.parametrize("window,stride,padding", [(3, 2, (1, 1)), (2, 2, (0, 0)),
                                                   (3, 1, (1, 1)), (3, 2, (0, 1))])
def test_max_pool_kernels_equal_the_xla_version(window, stride, padding):
  """max_pool.cc (pool and scatter) against the XLA implementations, exactly: ties (values
  rounded to halves), a window of -inf values at the padding, NaN in windows and channels."""
  from tests.models.test_onednn_conv import require_onednn
  require_onednn()
  rng = np.random.default_rng(window + stride)
  x = jnp.round(jnp.asarray(rng.normal(size=(2, 9, 7, 20)), jnp.float32) * 2) / 2
  x = (x.at[0, :3, :3, :].set(-jnp.inf).at[1, 2:5, 2:5, 1].set(-jnp.inf)
       .at[1, :, :, 2].set(jnp.nan).at[1, 0, 0, 3].set(jnp.nan))
  kw = dict(window=window, stride=stride, padding=padding)
  y = fast_backward._pool_max(x, **kw)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  pool = jax.jit(lambda x: fast_backward._pool(x, **kw))
  scatter = jax.jit(lambda g, x: fast_backward._scatter(g, x, **kw))
  assert "jaxmm_max_pool" in pool.lower(x).as_text()
  assert "jaxmm_max_pool_scatter" in scatter.lower(g, x).as_text()
  np.testing.assert_array_equal(pool(x), y)
  np.testing.assert_allclose(scatter(g, x), fast_backward._scatter_to_first_max(g, x, **kw),
                             rtol=1e-6, atol=1e-6)
