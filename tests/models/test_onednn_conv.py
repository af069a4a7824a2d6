"""oneDNN convolutions (FFI custom calls) equal lax's values and gradients, under jit and vmap."""
import os
import platform
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmm.models import fast_backward, onednn_conv
from tests.conftest import xla_flags

NHWC = fast_backward.NHWC
# setup.py installs oneDNN here: there the path must work, not be skipped.
EXPECTED = sys.platform.startswith("linux") and platform.machine() == "x86_64"


def require_onednn():
  """Loads the library; skips where it cannot be had (not where setup.py installs it)."""
  try:
    onednn_conv.load()
  except onednn_conv.OneDNNUnavailable as e:
    if EXPECTED:
      raise
    pytest.skip(f"oneDNN unavailable here: {e}")


@pytest.fixture(scope="module")
def loaded():
  require_onednn()


def lax_conv(stride, padding):
  return lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                               dimension_numbers=NHWC)


def case(kernel, stride, size, cin, cout, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(3, size, size + 2, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, cin, cout)) / kernel, jnp.float32)
  return x, w


@pytest.mark.parametrize("kernel,stride,pad,size,cin,cout", [
    (3, 1, ((1, 1), (1, 1)), 12, 4, 5), (1, 1, ((0, 0), (0, 0)), 9, 3, 7),
    (3, 2, ((1, 1), (1, 1)), 15, 4, 6), (1, 2, ((0, 0), (0, 0)), 16, 5, 6),
    (7, 2, ((3, 3), (3, 3)), 32, 3, 8), (3, 1, ((0, 2), (2, 1)), 10, 2, 3),
    # ResNet-sized channels: the kernels go to oneDNN's blocked layouts (on AVX-512, Acdb64a
    # and Bcda64b; 72 outputs pad the last block), copied by onednn_conv.cc's CopyToBlocked.
    (3, 1, ((1, 1), (1, 1)), 6, 64, 64), (3, 2, ((1, 1), (1, 1)), 7, 128, 72)])
def test_values_and_both_gradients_match_lax(loaded, kernel, stride, pad, size, cin, cout):
  x, w = case(kernel, stride, size, cin, cout)
  ours = jax.jit(lambda x, w: onednn_conv.conv(x, w, stride, pad))
  ref = lax_conv(stride, pad)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  g = jnp.asarray(np.random.default_rng(1).normal(size=ref(x, w).shape), jnp.float32)
  grads = jax.jit(jax.grad(lambda x, w: jnp.sum(onednn_conv.conv(x, w, stride, pad) * g),
                           (0, 1)))(x, w)
  ref_grads = jax.grad(lambda x, w: jnp.sum(ref(x, w) * g), (0, 1))(x, w)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_vmap_folds_input_gradients_and_maps_kernel_gradients(loaded):
  """Saliency vmaps path points over the input (folded into one call); per-example kernel
  gradients vmap both operands of the kernel gradient (one call per element)."""
  x, w = case(3, 1, 8, 3, 4)
  points = jnp.stack([x * a for a in (0.25, 0.5, 1.0)])  # [3 points, 3 images, ...]
  pad = ((1, 1), (1, 1))
  score = lambda f: lambda x, w: jnp.sum(jnp.tanh(f(x, w)))
  ours, ref = (lambda x, w: onednn_conv.conv(x, w, 1, pad)), lax_conv(1, pad)
  dx = jax.jit(jax.vmap(jax.grad(score(ours)), (0, None)))(points, w)
  np.testing.assert_allclose(dx, jax.vmap(jax.grad(score(ref)), (0, None))(points, w),
                             rtol=1e-4, atol=1e-5)
  dw = jax.jit(jax.vmap(jax.grad(score(ours), 1), (0, None)))(points, w)
  np.testing.assert_allclose(dw, jax.vmap(jax.grad(score(ref), 1), (0, None))(points, w),
                             rtol=1e-4, atol=1e-4)
  ws = jnp.stack([w, 2 * w])  # both operands batched: one call per element
  y = jax.jit(jax.vmap(ours, (None, 0)))(x, ws)
  np.testing.assert_allclose(y, jax.vmap(ref, (None, 0))(x, ws), rtol=1e-5, atol=1e-5)


def test_input_gradient_alone_computes_no_kernel_gradient(loaded):
  x, w = case(3, 1, 8, 3, 4)
  dx = jax.jit(jax.grad(lambda x: jnp.sum(onednn_conv.conv(x, w, 1, ((1, 1), (1, 1))) ** 2)))
  text = dx.lower(x).compile().as_text()
  assert "jaxmm_onednn_conv_bwd_data" in text
  assert "jaxmm_onednn_conv_bwd_weights" not in text


def test_flax_convs_route_to_onednn_on_one_cpu_device(loaded, monkeypatch):
  calls = []
  original = onednn_conv.conv
  monkeypatch.setattr(onednn_conv, "conv", lambda *a: calls.append(a[2:]) or original(*a))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 2)), jnp.float32)
  for stride in (1, 2):
    layer = nn.Conv(4, (3, 3), stride, padding=1, use_bias=False,
                    conv_general_dilated=fast_backward.conv_general_dilated)
    variables = nn.Conv(4, (3, 3), stride, padding=1, use_bias=False).init(jax.random.key(0), x)
    np.testing.assert_allclose(layer.apply(variables, x),
                               nn.Conv(4, (3, 3), stride, padding=1,
                                       use_bias=False).apply(variables, x), rtol=1e-5,
                               atol=1e-5)
    # bfloat16 operands and negative (cropping) padding keep XLA's convolution.
    layer.apply(jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables),
                x.astype(jnp.bfloat16))
    fast_backward.conv_general_dilated(x, variables["params"]["kernel"], (stride, stride),
                                       ((-1, 1), (1, 1)), dimension_numbers=NHWC)
  assert calls == [(1, ((1, 1), (1, 1))), (2, ((1, 1), (1, 1)))]
  assert onednn_conv.describe() == "oneDNN convolutions (float32)"


def test_mode_switch_and_typo(monkeypatch):
  monkeypatch.setenv(onednn_conv.ENV, "0")
  x = jnp.ones((1, 4, 4, 2))
  assert not onednn_conv.usable(x, jnp.ones((3, 3, 2, 2)))
  assert onednn_conv.describe() == f"XLA convolutions ({onednn_conv.ENV}=0)"
  monkeypatch.setenv(onednn_conv.ENV, "yes please")
  with pytest.raises(ValueError, match="JAXMM_ONEDNN='yes please': expected auto, 0/off or 1/on"):
    onednn_conv.mode()


def test_missing_library_and_failed_build_say_what_and_where(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMM_ONEDNN_ROOT", str(tmp_path / "nowhere"))
  with pytest.raises(onednn_conv.OneDNNUnavailable, match="nowhere.*pip install onednn-cpu"):
    onednn_conv.onednn_root()
  root = tmp_path / "root"
  (root / "include/oneapi/dnnl").mkdir(parents=True)
  (root / "include/oneapi/dnnl/dnnl.hpp").write_text("#error not a real header\n")
  (root / "lib").mkdir()
  (root / "lib/libdnnl.so").write_bytes(b"")
  with pytest.raises(onednn_conv.OneDNNUnavailable,
                     match="(?s)building onednn_conv.cc, .* failed.*not a real header"):
    onednn_conv.build(root, tmp_path / "cache")
  assert list((tmp_path / "cache").iterdir()) == []  # no half-written library left behind


def test_a_corrupt_cached_library_is_rebuilt(loaded, tmp_path):
  path = onednn_conv.build(out_dir=tmp_path)
  path.write_bytes(b"not a shared library")
  lib = onednn_conv.open_library(tmp_path)
  assert hasattr(lib, "JaxmmConvFwd") and path.stat().st_size > 1000


def test_conv_loads_the_library_itself(loaded):
  """A fresh process calling conv (no load() or usable() first) gets oneDNN, not XLA's
  'No FFI handler registered'."""
  code = ("import jax.numpy as jnp; from jaxmm.models import onednn_conv as o; "
          "print(o.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), 1, ((1, 1), (1, 1)))"
          "[0, 1, 1, 0])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "18.0", out.stderr[-2000:]


SEVERAL_DEVICES = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxmm.models import fast_backward, onednn_conv, resnet
assert jax.device_count() == 2 and onednn_conv.describe() == "oneDNN convolutions (float32)"
mesh = jax.make_mesh((2,), ("data",))
model = resnet.ResNetTiny(num_classes=3)
x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
variables = model.init(jax.random.key(0), x, train=False)
x = jax.device_put(x, NamedSharding(mesh, P("data")))  # data parallel: images split
params = jax.device_put(variables["params"], NamedSharding(mesh, P()))

def loss(params, x):  # training mode: batch statistics over both devices' images
  (logits, _), _ = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"])
  return jnp.sum(jnp.tanh(logits) ** 2)

def run():
  step = jax.jit(jax.value_and_grad(loss))
  return step(params, x), step.lower(params, x).compile().as_text()

(ours, hlo) = run()
assert hlo.count("jaxmm_onednn_conv_bwd_weights") >= 9, hlo.count("jaxmm_onednn_conv")
fast_backward.ENABLED = False  # the same model on XLA's convolutions
(ref, hlo) = run()
assert "jaxmm_onednn" not in hlo
for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
  np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
print("ok")
"""


def test_data_parallel_over_several_devices_matches_xla(loaded):
  """Two CPU devices, images split between them: each device's oneDNN calls see its own
  images, the kernel gradients are summed over both (custom_partitioning), and the loss and
  gradients equal XLA's convolutions under the same sharding."""
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"))
  out = subprocess.run([sys.executable, "-c", SEVERAL_DEVICES], capture_output=True, text=True,
                       timeout=300, env=env)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
