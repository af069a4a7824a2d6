"""jaxmm's conv and max-pool primitives under every transformation: jvp, grad of grad, hessian
vector products, vmap and jax.shard_map of them equal lax's (the oneDNN and the polyphase
backends), and a whole ResNet differentiates forward and twice as the plain lax model does, in
eval and in training mode."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmm.models import batch_norm, fast_backward, onednn_conv, resnet
from tests.conftest import xla_flags
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


def test_resnet_train_mode_input_gradient_penalty_matches_the_plain_model(monkeypatch):
  """Training mode: jaxmm's BatchNorm (C++ moments, differentiated in x inside the penalty's
  inner gradient) and ops against flax's BatchNorm on plain lax ops. Four images: the last
  stage's BatchNorms see four values per channel (with two, float32 rounding in either model
  moves the penalty's gradient by 0.6%)."""
  model = resnet.ResNetTiny(num_classes=3)
  x = distinct(4, (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)

  def penalty(params):
    f = lambda x: model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])[0][0][:, 0].sum()
    return jnp.sum(jax.grad(f)(x) ** 2)

  step = jax.jit(jax.grad(penalty))
  assert "jaxmm_bn_moments" in step.lower(variables["params"]).as_text()
  ours = step(variables["params"])
  monkeypatch.setattr(batch_norm, "ENABLED", False)
  monkeypatch.setattr(fast_backward, "ENABLED", False)
  close(ours, jax.jit(jax.grad(penalty))(variables["params"]), tol=2e-3)


# jaxmm's ops inside jax.shard_map (the images split over the devices, the kernel replicated):
# values, input gradients and kernel gradients summed over the devices equal lax's (they raised
# cotangent type errors, and on two devices the oneDNN kernel gradients were wrong). With
# check_vma (the default) the operands vary over the mesh axis and the primitives compute lax's
# ops; without it (and under pmap) each device runs oneDNN on its own images.
SHARD_MAP = r"""
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxmm.models import batch_norm, fast_backward, onednn_conv
D = jax.device_count()
mesh = jax.make_mesh((D,), ("data",))
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(2 * D, 9, 9, 3)), jnp.float32)
w = jnp.asarray(rng.normal(size=(7, 7, 3, 5)) / 7, jnp.float32)
PAD = ((3, 3), (3, 3))
lax_conv = lambda x, w: lax.conv_general_dilated(x, w, (2, 2), PAD,
                                                 dimension_numbers=fast_backward.NHWC)
lax_pool = lambda y: lax.reduce_window(y, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                       ((0, 0), (1, 1), (1, 1), (0, 0)))
OPS = {"onednn": (lambda x, w: onednn_conv.conv(x, w, 2, PAD), lax_conv),
       "strided": (lambda x, w: fast_backward.strided_conv(x, w, 2, PAD), lax_conv),
       "pool": (lambda x, w: fast_backward.max_pool(onednn_conv.conv(x, w, 2, PAD), 3, 2, (1, 1)),
                lambda x, w: lax_pool(lax_conv(x, w)))}

def close(got, want, what):
  err = float(jnp.max(jnp.abs(got - want)))
  assert err <= 1e-4 * float(jnp.max(jnp.abs(want))) + 1e-6, (what, err)

def results(op, check_vma):
  loss = lambda x, w: jnp.sum(jnp.tanh(op(x, w)) ** 2)
  run = lambda f, out: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P("data"), P()),
                                             out_specs=out, check_vma=check_vma))
  # With check_vma, JAX sums the replicated kernel's cotangent over the devices itself.
  kernel_grad = jax.grad(loss, 1) if check_vma else (
      lambda x, w: lax.psum(jax.grad(loss, 1)(x, w), "data"))
  fns = {"forward": run(op, P("data")), "input grad": run(jax.grad(loss), P("data")),
         "kernel grad": run(kernel_grad, P())}
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  return {k: f(xs, w) for k, f in fns.items()}, fns["kernel grad"].lower(xs, w).as_text()

for name, (op, ref) in OPS.items():
  loss = lambda x, w: jnp.sum(jnp.tanh(ref(x, w)) ** 2)
  want = {"forward": ref(x, w), "input grad": jax.grad(loss)(x, w),
          "kernel grad": jax.grad(loss, 1)(x, w)}
  for check_vma in (True, False):
    got, text = results(op, check_vma)
    for k in want:
      close(got[k], want[k], (name, check_vma, k))
    if name == "onednn":  # lax's ops on varying operands, else each device's oneDNN calls
      assert ("jaxmm_onednn_conv_bwd_weights" in text) == (not check_vma), check_vma

# pmap: each device's own kernel gradient, from its local oneDNN call.
grads = lambda conv: jax.pmap(jax.grad(lambda w, x: jnp.sum(jnp.tanh(conv(x, w)) ** 2)),
                              in_axes=(None, 0))(w, x.reshape(D, 2, *x.shape[1:]))
close(grads(OPS["onednn"][0]), grads(lax_conv), "pmap")

# Training-mode BatchNorm: each device's batch statistics.
def bn_loss(x, scale):
  y = batch_norm.train_batch_norm(x, scale, jnp.zeros(3), 1e-5, True)[0]
  return jnp.sum(jnp.sin(y))

def bn_reference(x, scale):
  mean = x.mean((0, 1, 2))
  var = jnp.maximum((x * x).mean((0, 1, 2)) - mean ** 2, 0.0)
  return jnp.sum(jnp.sin(jax.nn.relu((x - mean) * lax.rsqrt(var + 1e-5) * scale)))

scale = jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
bn = jax.jit(jax.shard_map(jax.grad(bn_loss, (0, 1)), mesh=mesh, in_specs=(P("data"), P()),
                           out_specs=(P("data"), P())))
got = bn(jax.device_put(x, NamedSharding(mesh, P("data"))), scale)
shards = x.reshape(D, 2, *x.shape[1:])
want = (jax.vmap(jax.grad(bn_reference), (0, None))(shards, scale).reshape(x.shape),
        jax.vmap(jax.grad(bn_reference, 1), (0, None))(shards, scale).sum(0))
close(got[0], want[0], "bn input grad")
close(got[1], want[1], "bn scale grad")
print("ok")
"""


@pytest.mark.parametrize("devices", [1, 2])
def test_shard_map_matches_lax(devices):
  """SHARD_MAP on one and on two CPU devices (a subprocess, for the device count); the max
  pool is applied to a convolution, so that its gradient reaches the kernel's."""
  require_onednn()
  env = dict(os.environ, XLA_FLAGS=xla_flags(
      f"--xla_force_host_platform_device_count={devices}"))
  out = subprocess.run([sys.executable, "-c", SHARD_MAP], capture_output=True, text=True,
                       timeout=300, env=env)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
