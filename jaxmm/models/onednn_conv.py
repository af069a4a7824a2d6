"""oneDNN convolutions for jaxmm's models on CPU, as XLA FFI custom calls.

XLA's CPU backend runs convolutions with Eigen, and their gradients need the activations
transposed to a channels-major layout first; oneDNN (the library PyTorch's CPU convolutions
use) reads NHWC activations directly. On a 2-core Xeon, 16 x 56^2 x 64, 3x3: forward 12.5 ->
10.9 ms, both gradients 38 -> 21 ms; the 7x7/2 stem at 224 px: 134 -> 81 ms; a ResNet-18
training step at batch 16: 1.01 -> 0.76 s (0.70 s with jaxmm.host_memory, 0.60 s once the
scratchpads and kernel copies stopped being zeroed and re-copied the slow way).

`conv(x, kernel, stride, padding)` is the NHWC / HWIO float32 convolution; its forward, input
gradient and kernel gradient are oneDNN primitives (onednn_conv.cc), called through three JAX
primitives that transpose into each other (`conv_ops`), so jax.grad, jax.jvp, grad of grad and
vmap all use them. The library is compiled on first use with the machine's C++ compiler against
the headers of jaxlib (XLA FFI) and of the `onednn-devel-cpu-gomp` wheel, into
`$JAXMM_CACHE_DIR` (default ~/.cache/jaxmm), once per source, jax and oneDNN version.

`usable(x, kernel)` says whether a convolution should take this path: float32 operands, the
CPU backend, and the library builds and loads. Over several CPU devices or processes (data
parallel) each device runs oneDNN on its own images and the kernel gradients are all-reduced
(custom_partitioning, `_partitioned`, which inside jax.shard_map over every mesh axis, or
pmap, is each device's local call); where an operand varies over shard_map's manual axes the
convolution is lax's (`conv_ops.primitive`). JAXMM_ONEDNN=0 turns it off, =1 makes a failed
build an error instead of a one-time warning and a fall back to XLA's convolutions.
"""
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.models import conv_ops

# The library's sources: the convolutions, and the reductions of batch_norm.py and the max pool
# of fast_backward.py (no oneDNN in them, but built, cached and loaded with the convolutions).
SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("onednn_conv.cc", "batch_norm.cc", "max_pool.cc"))
TARGETS = {"jaxmm_onednn_conv_fwd": "JaxmmConvFwd",
           "jaxmm_onednn_conv_bwd_data": "JaxmmConvBwdData",
           "jaxmm_onednn_conv_bwd_weights": "JaxmmConvBwdWeights",
           "jaxmm_bn_moments": "JaxmmBnMoments",
           "jaxmm_bn_grad_sums": "JaxmmBnGradSums",
           "jaxmm_max_pool": "JaxmmMaxPool",
           "jaxmm_max_pool_scatter": "JaxmmMaxPoolScatter"}
# batch_norm.cc recomputes a ReLU's mask, (x - mean) a + b > 0, rounded as XLA does
# (-ffp-contract=off); loops marked `omp simd` are vectorised (-fopenmp-simd, also without
# -fopenmp).
FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-ffp-contract=off", "-fopenmp-simd")
ENV = "JAXMM_ONEDNN"  # auto (default) | 0 / off | 1 / on

_state: dict = {}  # "error": why the library is unavailable; "loaded": True once registered


class OneDNNUnavailable(RuntimeError):
  """The oneDNN convolution library could not be found, built or loaded."""


def mode() -> str:
  """JAXMM_ONEDNN as 'auto' | 'off' | 'on'; anything else raises naming the valid values."""
  value = os.environ.get(ENV, "auto").strip().lower()
  modes = {"auto": "auto", "": "auto", "0": "off", "off": "off", "false": "off",
           "1": "on", "on": "on", "true": "on"}
  if value not in modes:
    raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected auto, 0/off or 1/on")
  return modes[value]


def onednn_root() -> Path:
  """The prefix holding oneDNN's include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so:
  $JAXMM_ONEDNN_ROOT, else where pip installs the onednn wheels' data (the environment's
  prefix, or the user base for `pip install --user`)."""
  candidates = ([Path(os.environ["JAXMM_ONEDNN_ROOT"])] if os.environ.get("JAXMM_ONEDNN_ROOT")
                else [Path(sys.prefix), Path(sys.base_prefix), Path(site.getuserbase())])
  for root in candidates:
    if (root / "include/oneapi/dnnl/dnnl.hpp").is_file() and (root / "lib/libdnnl.so").exists():
      return root
  raise OneDNNUnavailable(
      f"oneDNN headers and library not found under {[str(c) for c in candidates]} "
      "(include/oneapi/dnnl/dnnl.hpp, lib/libdnnl.so): pip install onednn-cpu-gomp "
      "onednn-devel-cpu-gomp, or set JAXMM_ONEDNN_ROOT")


def cache_dir() -> Path:
  return Path(os.environ.get("JAXMM_CACHE_DIR", Path.home() / ".cache" / "jaxmm"))


def build(root: Path | None = None, out_dir: Path | None = None) -> Path:
  """Compiles SOURCES into a shared library (once: the file name hashes the sources, the
  flags, the jax version, the oneDNN prefix and its version header) and returns its path.
  Concurrent builders each write a temporary file and rename it into place."""
  root = root or onednn_root()
  out_dir = Path(out_dir or cache_dir())
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise OneDNNUnavailable("no C++ compiler (g++ / c++ / $CXX) to build the oneDNN library")
  version = root / "include/oneapi/dnnl/dnnl_version.h"
  digest = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES) + " ".join(FLAGS).encode()
                          + jax.__version__.encode() + str(root).encode()
                          + (version.read_bytes() if version.is_file() else b"")).hexdigest()
  target = out_dir / f"jaxmm_onednn_{digest[:16]}.so"
  if target.is_file():
    return target
  out_dir.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
  os.close(fd)
  # OpenMP splits the kernel copies across threads (onednn_conv.cc); a compiler without it
  # (clang lacking libomp) builds the same library with one-thread copies.
  try:
    for openmp in (["-fopenmp"], []):
      command = [compiler, *FLAGS, *openmp, f"-I{jax.ffi.include_dir()}",
                 f"-I{root / 'include'}", *map(str, SOURCES),
                 f"-L{root / 'lib'}", "-ldnnl", f"-Wl,-rpath,{root / 'lib'}", "-o", tmp]
      done = subprocess.run(command, capture_output=True, text=True, timeout=600)
      if done.returncode == 0:
        os.replace(tmp, target)
        return target
    names = ", ".join(s.name for s in SOURCES)
    raise OneDNNUnavailable(f"building {names} failed ({' '.join(command)}):\n"
                            f"{done.stderr[:3000]}")  # the first errors say most
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def open_library(out_dir: Path | None = None) -> ctypes.CDLL:
  """Builds (if needed) and opens the library; a cached file that does not load (truncated,
  say) is removed and built again once."""
  path = build(out_dir=out_dir)
  try:
    return ctypes.cdll.LoadLibrary(str(path))
  except OSError as e:
    logging.warning("jaxmm: rebuilding the oneDNN library %s, which did not load: %s", path, e)
    path.unlink(missing_ok=True)
    return ctypes.cdll.LoadLibrary(str(build(out_dir=out_dir)))


def load() -> None:
  """Builds (if needed) and loads the library and registers its FFI targets; once per
  process. Raises OneDNNUnavailable (the same one again on later calls) if it cannot."""
  if _state.get("loaded"):
    return
  if "error" in _state:
    raise _state["error"]
  try:
    lib = open_library()
    for name, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
  except (OneDNNUnavailable, OSError, AttributeError) as e:
    error = e if isinstance(e, OneDNNUnavailable) else OneDNNUnavailable(
        f"loading the oneDNN library failed: {e}")
    _state["error"] = error
    raise error from e
  _state["loaded"] = True


def available() -> bool:
  """Whether the oneDNN path is on and loads; in auto mode a failure is logged once and the
  caller falls back to XLA's convolutions."""
  selected = mode()
  if selected == "off":
    return False
  try:
    load()
  except OneDNNUnavailable as e:
    if selected == "on":
      raise
    if not _state.get("warned"):
      _state["warned"] = True
      logging.warning("jaxmm: oneDNN convolutions unavailable, using XLA's (%s=0 silences "
                      "this): %s", ENV, e)
    return False
  return True


def _excluded() -> str | None:
  """Why this process's default devices keep XLA's convolutions before any library question
  (switched off, not a CPU, several devices without `PARTITIONABLE`), or None."""
  if mode() == "off":
    return f"{ENV}=0"
  if jax.default_backend() != "cpu":
    return f"on {jax.default_backend()}"
  if jax.device_count() != 1 and not PARTITIONABLE:
    return "several devices"
  return None


def describe() -> str:
  """Which convolutions jaxmm's ResNets run on this process's default devices, and why."""
  if reason := _excluded():
    return f"XLA convolutions ({reason})"
  try:
    load()
  except OneDNNUnavailable as e:
    return f"XLA convolutions (oneDNN unavailable: {e})"
  return "oneDNN convolutions (float32)"


def usable(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether conv(x, kernel, ...) should run on oneDNN: float32 on CPU devices."""
  return (x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and _excluded() is None
          and available())


def kernels_excluded() -> str | None:
  """Why this process keeps XLA's ops instead of the library's other kernels (batch_norm.cc,
  max_pool.cc: not partitioned, so one CPU device only), or None."""
  if jax.device_count() != 1:
    return "several devices"
  if reason := _excluded():
    return reason
  return None if available() else "jaxmm library unavailable"


def kernels_usable(x: jax.Array) -> bool:
  """Whether x may take the library's other kernels: float32, and `kernels_excluded` None."""
  return x.dtype == jnp.float32 and kernels_excluded() is None


# ---------------------------------------------------------------- the custom calls

def _attrs(stride: int, padding: Sequence[tuple[int, int]], exclusive: bool) -> dict:
  """The custom calls' attributes. exclusive: the call runs alone among the library's calls
  (one device: faster); False over several devices, whose calls overlapped run faster."""
  (top, bottom), (left, right) = padding
  return {k: np.int64(v) for k, v in dict(stride_h=stride, stride_w=stride, pad_top=top,
                                          pad_bottom=bottom, pad_left=left, pad_right=right,
                                          exclusive=exclusive).items()}


def output_shape(x_shape, kernel_shape, stride: int, padding) -> tuple[int, int, int, int]:
  n, h, w, _ = x_shape
  kh, kw, _, out = kernel_shape
  (top, bottom), (left, right) = padding
  return (n, (h + top + bottom - kh) // stride + 1, (w + left + right - kw) // stride + 1, out)


def _local_forward(x, kernel, *, stride, padding, exclusive=True):
  shape = output_shape(x.shape, kernel.shape, stride, padding)
  return jax.ffi.ffi_call("jaxmm_onednn_conv_fwd", jax.ShapeDtypeStruct(shape, x.dtype))(
      x, kernel, **_attrs(stride, padding, exclusive))


def _local_input_grad(g, kernel, *, stride, padding, input_hw, exclusive=True):
  shape = (g.shape[0], *input_hw, kernel.shape[2])
  return jax.ffi.ffi_call("jaxmm_onednn_conv_bwd_data", jax.ShapeDtypeStruct(shape, g.dtype))(
      g, kernel, **_attrs(stride, padding, exclusive))


def _local_kernel_grad(x, g, *, stride, padding, kernel_hw, exclusive=True):
  shape = (*kernel_hw, x.shape[-1], g.shape[-1])
  return jax.ffi.ffi_call("jaxmm_onednn_conv_bwd_weights",
                          jax.ShapeDtypeStruct(shape, x.dtype))(
                              x, g, **_attrs(stride, padding, exclusive))


# Over several devices (data parallel: the images sharded, the kernel replicated) each call runs
# on every device's own images: the forward and the input gradient are per image; the kernel
# gradient is each device's sum over its images, all-reduced over the axes that shard them.
# Any other sharding is resharded to that one first (custom_partitioning; Shardy rules below).
_PARTS = {  # name: (local call, Shardy rule, result summed over the images)
    "forward": (_local_forward, "n h w i, a b i o -> n p q o", False),
    "input_grad": (_local_input_grad, "n p q o, a b i o -> n h w i", False),
    "kernel_grad": (_local_kernel_grad, "n h w i, n p q o -> a b i o", True),
}


@functools.lru_cache(maxsize=None)
def _partitioned(part: str, params: tuple):
  from jax.experimental.custom_partitioning import custom_partitioning
  from jax.sharding import NamedSharding, PartitionSpec
  local, rule, summed = _PARTS[part]
  local = functools.partial(local, exclusive=False, **dict(params))

  @custom_partitioning
  def call(a, b):
    return local(a, b)

  def shardings(mesh, arg_shapes):
    spec = arg_shapes[0].sharding.spec if isinstance(arg_shapes[0].sharding,
                                                     NamedSharding) else ()
    axes = spec[0] if len(spec) else None  # the mesh axes the images are split over
    images, whole = NamedSharding(mesh, PartitionSpec(axes)), NamedSharding(mesh,
                                                                            PartitionSpec())
    args = (images, images) if summed else (images, whole)
    return axes, args, whole if summed else images

  def partition(mesh, arg_shapes, result_shape):
    axes, args, result = shardings(mesh, arg_shapes)
    if summed and axes is not None:
      return mesh, lambda a, b: jax.lax.psum(local(a, b), axes), result, args
    return mesh, local, result, args

  def infer(mesh, arg_shapes, result_shape):
    return shardings(mesh, arg_shapes)[2]

  # Every factor but the images, in order of appearance (Shardy wants them sorted so).
  factors = rule.replace(",", " ").replace("->", " ").split()
  others = tuple(f for i, f in enumerate(factors) if f != "n" and f not in factors[:i])
  call.def_partition(partition, infer_sharding_from_operands=infer,
                     propagate_user_sharding=lambda mesh, user_shape: user_shape.sharding,
                     sharding_rule=rule,
                     reduction_factors=("n",) if summed else (),
                     need_replication_factors=others)
  return call


def _call(part: str):
  def impl(a, b, **params):
    load()  # registers the handlers (cached); raises OneDNNUnavailable saying why not
    if jax.device_count() == 1:
      return _PARTS[part][0](a, b, **params)
    return _partitioned(part, tuple(sorted(params.items())))(a, b)
  return impl


# Forward, input gradient and kernel gradient as primitives that transpose into each other
# (conv_ops), so jvp, grad of grad and vmap of the ResNets run on oneDNN too.
OPS = conv_ops.conv_ops("jaxmm_onednn_conv", *map(_call, _PARTS), platform="cpu")


def _register_partitioning() -> bool:
  """Whether jit lowers OPS with its devices known, as custom_partitioning needs (it checks the
  jaxpr for primitives in JAX's registry of those; ours bind it only when lowered). An internal
  registry: where it is missing, runs over several devices keep XLA's convolutions."""
  try:
    from jax._src import dispatch
    dispatch.prim_requires_devices_during_lowering.update(OPS)
  except (ImportError, AttributeError):
    return False
  return True


PARTITIONABLE = _register_partitioning()


def conv(x: jax.Array, kernel: jax.Array, stride: int,
         padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """lax.conv_general_dilated(x, kernel, (stride, stride), padding, NHWC/HWIO/NHWC) on oneDNN
  (float32, CPU; `usable` says whether to; without the library it raises OneDNNUnavailable)."""
  return OPS.forward.bind(x, kernel, stride=stride, padding=padding)
