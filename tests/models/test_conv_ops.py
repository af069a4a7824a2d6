"""jaxmm's conv and max-pool primitives under every transformation: jvp, grad of grad, hessian
vector products and vmap of them equal lax's (the oneDNN and the polyphase backends), and a
whole ResNet differentiates forward and twice as the plain lax model does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmm.models import fast_backward, onednn_conv, resnet
from tests.models.test_onednn_conv import require_onednn

NHWC = fast_backward.NHWC
PAD = ((1, 1), (1, 1))


@pytest.fixture(scope="module", params=["onednn", "polyphase"])
def backend(request):
  if request.param == "onednn":
    require_onednn()
    return lambda x, w, s: onednn_conv.conv(x, w, s, PAD)
  return lambda x, w, s: fast_backward.strided_conv(x, w, s, PAD)


def ref(x, w, s):
  return lax.conv_general_dilated(x, w, (s, s), PAD, dimension_numbers=NHWC)


def data(seed=0, n=2, size=9, cin=3, cout=4):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in
          ((n, size, size, cin), (3, 3, cin, cout), (n, size, size, cin), (3, 3, cin, cout))]


def close(a, b, tol=1e-4):
  for got, want in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("stride", [1, 2])
def test_jvp_matches_lax(backend, stride):
  x, w, tx, tw = data()
  f = lambda conv: jax.jit(lambda x, w: jax.jvp(lambda x, w: jnp.tanh(conv(x, w, stride)),
                                                (x, w), (tx, tw)))
  close(f(backend)(x, w), f(ref)(x, w))


@pytest.mark.parametrize("stride", [1, 2])
def test_input_gradient_penalty_and_hessian_vector_product_match_lax(backend, stride):
  """Grad of grad (a penalty on the input gradient, trained through) and forward over
  reverse (a hessian-vector product in the kernel)."""
  x, w, _, v = data(1)

  def penalty(conv):
    def loss(x, w):
      return jnp.sum(jnp.tanh(conv(x, w, stride)) ** 2)
    return lambda w: jnp.sum(jax.grad(loss)(x, w) ** 2)

  close(jax.jit(jax.grad(penalty(backend)))(w), jax.grad(penalty(ref))(w))
  hvp = lambda conv: jax.jit(lambda w: jax.jvp(jax.grad(
      lambda w: jnp.sum(jnp.tanh(conv(x, w, stride)) ** 2)), (w,), (v,))[1])
  close(hvp(backend)(w), hvp(ref)(w))


def test_vmap_of_jvp_and_of_per_example_gradients(backend):
  x, w, tx, _ = data(2)
  xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, -w])
  jvp = lambda conv: lambda x, t: jax.jvp(lambda x: conv(x, w, 2), (x,), (t,))
  close(jax.jit(jax.vmap(jvp(backend), (0, None)))(xs, tx), jax.vmap(jvp(ref), (0, None))(xs, tx))
  # Both operands batched (one call per element), and per-example kernel gradients.
  close(jax.jit(jax.vmap(lambda x, w: backend(x, w, 1)))(xs, ws), jax.vmap(
      lambda x, w: ref(x, w, 1))(xs, ws))
  dw = lambda conv: jax.vmap(jax.grad(lambda w, x: jnp.sum(jnp.sin(conv(x[None], w, 1)))),
                             (None, 0))
  close(jax.jit(dw(backend))(w, x), dw(ref)(w, x))


def pool_ref(x):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def distinct(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape)
                     / np.prod(shape), jnp.float32)


def test_max_pool_jvp_second_order_and_vmap_match_lax():
  x, t = distinct(0, (2, 9, 9, 3)), distinct(1, (2, 9, 9, 3))
  pool = lambda x: fast_backward.max_pool(x, 3, 2, (1, 1))
  close(jax.jit(lambda x: jax.jvp(pool, (x,), (t,)))(x), jax.jvp(pool_ref, (x,), (t,)))
  # The max's choice is locally constant: the second derivative of pool(x * w) in w comes
  # from the product alone.
  f = lambda pool: lambda w: jnp.sum(jax.grad(lambda w: jnp.sum(pool(x * w) ** 2))(w) ** 2)
  w = jnp.full((3,), 1.5)
  close(jax.jit(jax.grad(f(pool)))(w), jax.grad(f(pool_ref))(w))
  g = distinct(2, (2, 5, 5, 3))
  vjp = lambda pool: lambda x, g: jax.vjp(pool, x)[1](g)[0]
  xs = jnp.stack([x, x[::-1]])
  close(jax.jit(jax.vmap(vjp(pool), (0, None)))(xs, g), jax.vmap(vjp(pool_ref), (0, None))(xs, g))
  close(jax.jit(jax.vmap(vjp(pool), (None, 0)))(x, jnp.stack([g, -g])),
        jax.vmap(vjp(pool_ref), (None, 0))(x, jnp.stack([g, -g])))


def test_resnet_jvp_and_input_gradient_penalty_match_the_plain_model(monkeypatch):
  """ResNetTiny with jaxmm's ops (oneDNN convs where they load, the custom max-pool gradient)
  against the same model on plain lax ops (fast_backward.ENABLED = False)."""
  model = resnet.ResNetTiny(num_classes=3)
  x = distinct(3, (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)

  def results():
    f = lambda params, x: model.apply({**variables, "params": params}, x, train=False)[0]
    penalty = jax.grad(lambda p: jnp.sum(jax.grad(lambda x: f(p, x)[:, 0].sum())(x) ** 2))
    return jax.jit(lambda p: (jax.jvp(lambda x: f(p, x), (x,), (jnp.cos(x),)), penalty(p)))(
        variables["params"])

  ours = results()
  monkeypatch.setattr(fast_backward, "ENABLED", False)
  close(ours, results(), tol=2e-3)
