r"""Side-by-side performance against peer libraries, same weights, inputs and machine.

  python -m jaxmm.benchmark saliency [--image_size=224 --batch=2 --steps=16 --samples=2]
  python -m jaxmm.benchmark train [--models=resnet18,resnet50,bert --batch=16 --json=PATH]
  python -m jaxmm.benchmark saliency --help     (each benchmark's own flags)

saliency: ResNet-18 (transformers' PyTorch ResNetForImageClassification, randomly initialised,
converted to jaxmm with jaxmm.third_party.resnet_hf), IG + SmoothGrad path points per second
and Grad-CAM images per second, jaxmm vs captum, and the ratio. Both sides compute the same
maps: IG with the right Riemann sum (captum's riemann_right has jaxmm's points and weights),
SmoothGrad noise of the same scale (the images each span [0, 1], so captum's absolute stdev
0.15 is jaxmm's 0.15 x the example's range), in float32 and torch eager. After the timing the
run prints how far apart the maps are: Grad-CAM of the last timed call, and IG without noise
on a few examples (noise draws differ between the libraries). torch and captum are test-only
dependencies: install them with `pip install -e '.[test]'`. Each measurement is the median
of --repeats timed calls after --warmup untimed calls (the first includes jaxmm's
compilation, reported apart), jaxmm and captum taking turns call by call.

train: training images (ResNet-18, ResNet-50) or sequences (BERT) per second, jaxmm's
build_model + train_step vs transformers' PyTorch classes of the same sizes run with PyTorch's
fastest documented settings, the ratio, and on a GPU the model FLOP utilisation; see
jaxmm.train_benchmark. --json=PATH writes the numbers of either benchmark.

A flag that does not apply to a benchmark is refused (`saliency --dtype=...` is an error).
On CPU both benchmarks add train_benchmark.RECOMMENDED_XLA_CPU_FLAGS to XLA_FLAGS (XLA's
multi-threaded convolutions instead of YNNPACK's; --no-xla_cpu_flags leaves XLA_FLAGS alone).
"""
import argparse
import functools
import json
import os
import sys
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm import host_memory, train_benchmark
from jaxmm.data.atomic import write_text_atomic
from jaxmm.models import batch_norm, fast_backward, onednn_conv
from jaxmm.models.resnet import ResNet18
from jaxmm.saliency import cams, gradients, model_fns, smoothgrad
from jaxmm.saliency.targets import target_scores

NOISE_LEVEL = 0.15  # SmoothGrad's sigma over the example's range (Smilkov et al.)
# The IG rule of both sides. captum's riemann_right has jaxmm's points k/n and weights 1/n;
# its riemann_trapezoid does not: its weights 1/n, halved at the ends, sum to (n - 1) / n
# (jaxmm's 1/(n - 1) sum to 1), so its maps came out (n - 1) / n of jaxmm's.
IG_RULE = "riemann_right"
PARITY_EXAMPLES = 2  # IG without noise is compared on this many examples, after the timing
SALIENCY_CLASSES = 10
BERT_MAX_POSITIONS = 512  # transformers' BertConfig.max_position_embeddings, as the torch side
# captum's IntegratedGradients / NoiseTunnel build their batches of path points and noisy
# copies with repeat / cat, which return contiguous NCHW tensors whatever the input's layout.
CHANNELS_LAST_TEXT = ("channels_last model and input (captum's IG batches of path points come "
                      "out contiguous NCHW)")


def interleaved(pair: dict, warmup: int, repeats: int) -> tuple[dict, dict]:
  """({name: (first call s, median s)}, {name: the last call's output}) of two callables:
  `warmup` untimed calls each (jaxmm's first includes compilation), then `repeats` rounds
  timing each in turn, so a change in the machine's speed (a shared host) hits both sides
  alike."""
  last = {}

  def keeping(name, fn):
    def call():
      last[name] = fn()
    return call

  steppers = {name: train_benchmark.Stepper(keeping(name, fn), lambda _: 0.0)
              for name, fn in pair.items()}
  measured = train_benchmark.measure_interleaved(steppers, warmup, repeats)
  return {name: (m.warmup_s[0], m.step_s) for name, m in measured.items()}, last


def unit_range_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  """[batch, size, size, 3] float32 random images, each rescaled to span exactly [0, 1] (as
  pixel values): every example then has the range 1, see captum_stdev."""
  x = np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)
  low = x.min(axis=(1, 2, 3), keepdims=True)
  high = x.max(axis=(1, 2, 3), keepdims=True)
  return (x - low) / (high - low)


def captum_stdev(images: np.ndarray, noise_level: float) -> float:
  """captum NoiseTunnel's `stdevs` that equals jaxmm SmoothGrad's noise. jaxmm draws sigma =
  noise_level x (max - min) of each example, captum one absolute stdev for the whole input
  tensor, so the examples must share one range (ValueError otherwise)."""
  ranges = np.ptp(images.reshape(len(images), -1), axis=1)
  if not np.all(ranges == ranges[0]):
    raise ValueError(f"the examples' ranges differ ({ranges.min()} to {ranges.max()}): "
                     f"captum's one absolute stdev cannot match jaxmm's per-example noise")
  return float(noise_level * ranges[0])


def captum_internal_batch(args) -> int:
  """captum's internal_batch_size for IG: --captum_batch, or the batch's whole path (batch x
  steps points per pass, as jaxmm's default path chunk)."""
  return args.captum_batch or args.batch * args.steps


def map_parity(jaxmm_maps, captum_maps) -> dict:
  """max |jaxmm - captum| of two map batches of the same layout, and that over max |captum|."""
  a, b = np.asarray(jaxmm_maps, np.float64), np.asarray(captum_maps, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"maps of shapes {a.shape} and {b.shape}")
  diff = float(np.abs(a - b).max())
  return {"max_abs_diff": diff, "relative": diff / max(float(np.abs(b).max()), 1e-30)}


def all_finite(*maps) -> bool:
  return all(bool(np.isfinite(np.asarray(m)).all()) for m in maps)


def torch_resnet18(num_classes: int):
  """transformers' ResNet-18 (basic blocks, 64..512) with a head, eval mode, BN stats set."""
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                     depths=[2, 2, 2, 2], layer_type="basic",
                                     num_labels=num_classes)
  model = transformers.ResNetForImageClassification(config)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.1, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return model.eval()


def jaxmm_resnet18_like(torch_model, num_classes: int):
  """jaxmm ResNet-18 variables converted from the torch model (head copied too)."""
  from jaxmm.third_party import resnet_hf
  with tempfile.TemporaryDirectory() as tmp:
    torch_model.save_pretrained(tmp)
    variables = resnet_hf.load_hf_resnet(tmp)
  head = torch_model.classifier[1]
  variables["params"]["fc"] = {"kernel": jnp.asarray(head.weight.detach().numpy().T),
                               "bias": jnp.asarray(head.bias.detach().numpy())}
  return ResNet18(num_classes=num_classes), variables


class TorchLogits:
  """Callable torch module returning logits (captum wants a tensor, not a ModelOutput)."""

  def __new__(cls, model):
    import torch

    class Wrapped(torch.nn.Module):
      def __init__(self):
        super().__init__()
        self.model = model

      def forward(self, x):
        return self.model(pixel_values=x).logits

    return Wrapped().eval()


def torch_device_and_sync():
  """("cuda", synchronize) with a GPU, else ("cpu", no-op); on a GPU cudnn.benchmark is on,
  PyTorch's documented setting for fixed input shapes."""
  import torch
  if not torch.cuda.is_available():
    return "cpu", lambda: None
  torch.backends.cudnn.benchmark = True
  return "cuda", torch.cuda.synchronize


def saliency_models(args, device: str):
  """(jaxmm apply, logits fn f, torch model, captum-ready logits net) of one randomly
  initialised ResNet-18, the same weights on both sides."""
  import torch
  torch_model = torch_resnet18(SALIENCY_CLASSES)
  model, variables = jaxmm_resnet18_like(torch_model, SALIENCY_CLASSES)
  torch_model = torch_model.to(device)
  net = TorchLogits(torch_model)
  if args.channels_last:
    net = net.to(memory_format=torch.channels_last)
  apply = model_fns.linen_apply_fn(model, variables, train=False)
  return apply, lambda v: apply(v)[0], torch_model, net


def saliency_inputs(args, device: str) -> tuple[np.ndarray, jax.Array, object]:
  """(images NHWC, the same as a jax array, as a torch NCHW tensor on `device`)."""
  import torch
  images = unit_range_images(args.batch, args.image_size)
  x_torch = torch.tensor(images.transpose(0, 3, 1, 2), device=device)
  if args.channels_last:
    x_torch = x_torch.contiguous(memory_format=torch.channels_last)
  return images, jnp.asarray(images), x_torch


def time_ig_smoothgrad(f, net, x, x_torch, targets: np.ndarray, stdev: float, args, sync):
  """Interleaved timing of IG + SmoothGrad, jaxmm vs captum: (times, last outputs)."""
  import captum.attr as captum_attr
  ig_sg = jax.jit(functools.partial(
      smoothgrad.ig_smoothgrad, f, steps=args.steps, num_samples=args.samples,
      noise_level=NOISE_LEVEL, rule=IG_RULE, path_chunk_size=args.path_chunk,
      sample_chunk_size=args.sample_chunk))
  t, key = jnp.asarray(targets), jax.random.key(0)
  nt = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(net))

  def torch_ig():
    attr = nt.attribute(
        x_torch, nt_type="smoothgrad", nt_samples=args.samples, stdevs=stdev,
        nt_samples_batch_size=args.samples, target=targets.tolist(), n_steps=args.steps,
        method=IG_RULE, internal_batch_size=captum_internal_batch(args))
    sync()
    return attr

  return interleaved({"jaxmm": lambda: jax.block_until_ready(ig_sg(x, t, key=key)),
                      "captum": torch_ig}, args.warmup, args.repeats)


def time_gradcam(apply, torch_model, net, x, x_torch, targets: np.ndarray, args, sync):
  """Interleaved timing of Grad-CAM at stage 4, jaxmm vs captum: (times, last outputs)."""
  import captum.attr as captum_attr

  def gradcam(v, targets_):
    score = lambda logits: target_scores(logits, targets_)
    _, a, g = model_fns.layer_activations_and_gradients(apply, v, "stage4", score)
    return cams.gradient_cam("gradcam", a, g, size=v.shape[1:3])["cam"]

  jax_cam_fn = jax.jit(gradcam)  # inputs are arguments: XLA must not constant-fold the work
  layer_cam = captum_attr.LayerGradCam(net, torch_model.resnet.encoder.stages[3])
  t = jnp.asarray(targets)

  def torch_cam():
    attr = layer_cam.attribute(x_torch, target=targets.tolist(), relu_attributions=True)
    attr = captum_attr.LayerAttribution.interpolate(attr, x_torch.shape[2:], "bilinear")
    sync()
    return attr

  return interleaved({"jaxmm": lambda: jax.block_until_ready(jax_cam_fn(x, t)),
                      "captum": torch_cam}, args.warmup, args.repeats)


def ig_parity(f, net, x, x_torch, targets: np.ndarray, args) -> dict:
  """map_parity of IG without noise (captum draws other noise than jaxmm) on the first
  PARITY_EXAMPLES examples, both sides with --steps points of IG_RULE."""
  import captum.attr as captum_attr
  n = min(args.batch, PARITY_EXAMPLES)
  ours = jax.jit(functools.partial(gradients.integrated_gradients, f, steps=args.steps,
                                   rule=IG_RULE, chunk_size=args.path_chunk))(
                                       x[:n], jnp.asarray(targets[:n]))
  theirs = captum_attr.IntegratedGradients(net).attribute(
      x_torch[:n], target=targets[:n].tolist(), n_steps=args.steps, method=IG_RULE,
      internal_batch_size=n * args.steps)
  return {**map_parity(ours, theirs.detach().cpu().numpy().transpose(0, 2, 3, 1)),
          "examples": n}


def saliency_benchmark(args) -> dict:
  """IG + SmoothGrad points/s and Grad-CAM images/s, jaxmm and captum, one process; then
  how far apart their maps are (outside the timing)."""
  import torch
  device, sync = torch_device_and_sync()
  machine = saliency_machine(args)
  apply, f, torch_model, net = saliency_models(args, device)
  images, x, x_torch = saliency_inputs(args, device)
  with torch.no_grad():
    logits_torch = net(x_torch).cpu().numpy()
  targets = np.argmax(logits_torch, -1)
  stdev = captum_stdev(images, NOISE_LEVEL)
  ig_times, ig_last = time_ig_smoothgrad(f, net, x, x_torch, targets, stdev, args, sync)
  cam_times, cam_last = time_gradcam(apply, torch_model, net, x, x_torch, targets, args, sync)
  load_after = os.getloadavg()[0]
  points = args.batch * args.steps * args.samples
  return {
      "machine": {**machine, "load_after": load_after},
      "device": {"jax": machine["device_kind"], "torch": device},
      "torch_device": device,
      "model": "resnet18", "num_classes": SALIENCY_CLASSES, "image_size": args.image_size,
      "batch": args.batch, "steps": args.steps, "samples": args.samples, "rule": IG_RULE,
      "points_per_call": points, "path_chunk": args.path_chunk,
      "sample_chunk": args.sample_chunk,
      "captum_internal_batch_size": captum_internal_batch(args),
      "noise_level": NOISE_LEVEL, "captum_stdevs": stdev,
      "repeats": args.repeats, "warmup": args.warmup,
      "settings": saliency_settings(args, machine, device, stdev),
      "logit_parity_max_abs_diff": float(np.abs(np.asarray(f(x)) - logits_torch).max()),
      **map_checks(ig_last, cam_last, lambda: ig_parity(f, net, x, x_torch, targets, args)),
      "ig_smoothgrad_points_per_s": {k: points / v[1] for k, v in ig_times.items()},
      "gradcam_images_per_s": {k: args.batch / v[1] for k, v in cam_times.items()},
      "first_call_s": {"jaxmm_ig_smoothgrad": ig_times["jaxmm"][0],
                       "jaxmm_gradcam": cam_times["jaxmm"][0]},
  }


def map_checks(ig_last: dict, cam_last: dict, ig_no_noise: Callable[[], dict]) -> dict:
  """After the timing: whether the last timed maps are finite (warnings if not) and how far
  apart jaxmm's and captum's maps are (Grad-CAM: the last timed call's; IG: `ig_no_noise()`)."""
  captum_cam = cam_last["captum"].detach().cpu().numpy()
  finite = {"ig_smoothgrad": all_finite(ig_last["jaxmm"], ig_last["captum"].detach().cpu()),
            "gradcam": all_finite(cam_last["jaxmm"], captum_cam)}
  jaxmm_cam = np.asarray(cam_last["jaxmm"])
  return {"map_parity": {"gradcam": map_parity(jaxmm_cam, captum_cam.reshape(jaxmm_cam.shape)),
                         "ig_no_noise": ig_no_noise()},
          "finite_maps": finite,
          "warnings": [f"non-finite {name} maps in the timed calls: their speed may not be "
                       f"representative" for name, ok in finite.items() if not ok]}


def saliency_machine(args) -> dict:
  """train_benchmark.host_info and jaxmm's convolution path."""
  return {**train_benchmark.host_info(args), "fast_backward": fast_backward.ENABLED,
          "convolutions": (onednn_conv.describe() if fast_backward.ENABLED
                           else "XLA convolutions (--no-fast_backward)")}


def saliency_settings(args, machine: dict, device: str, stdev: float) -> dict:
  """Each side's settings, as printed: {"captum": text, "jaxmm": text}."""
  import captum
  captum_batch = captum_internal_batch(args)
  captum_text = (
      f"captum {captum.__version__}: NoiseTunnel(IntegratedGradients) smoothgrad, "
      f"{args.samples} samples of stdevs {stdev:.3g} (absolute: {NOISE_LEVEL} x the range "
      f"1 of every example), nt_samples_batch_size = samples, internal_batch_size = "
      f"{captum_batch}, method {IG_RULE}; LayerGradCam on stage 4 + bilinear interpolate; "
      f"eval mode, {machine['torch_threads']} threads, "
      f"{CHANNELS_LAST_TEXT if args.channels_last else 'contiguous NCHW (--no-channels_last)'}"
      f"{', cudnn.benchmark' if device == 'cuda' else ''}; torch eager in float32: no "
      f"torch.compile (captum runs the model eagerly, through autograd and Grad-CAM's "
      f"module hooks) and no autocast (jaxmm computes float32 maps too and the maps are "
      f"compared below); --dtype / --torch_compile are train-only flags")
  jaxmm_text = (
      f"jaxmm: ig_smoothgrad noise_level {NOISE_LEVEL} x each example's range, method "
      f"{IG_RULE}, path_chunk {args.path_chunk}, sample_chunk {args.sample_chunk}; "
      f"gradient_cam of stage4; float32; {machine['convolutions']}; XLA_FLAGS="
      f"{machine['xla_flags']!r} (--no-xla_cpu_flags: without the recommended CPU flags); "
      f"host memory "
      f"{'kept (both sides: jaxmm.host_memory)' if machine['kept_host_memory'] else 'as is'}")
  return {"captum": captum_text, "jaxmm": jaxmm_text}


def print_saliency(result: dict, args) -> None:
  m = result["machine"]
  print(f"ResNet-18 {args.image_size}x{args.image_size}, batch {args.batch}, IG {args.steps} "
        f"steps x SmoothGrad {args.samples} samples; jax on {m['device_kind']}, torch on "
        f"{result['torch_device']}; {m['cpu_count']} CPUs ({m['cpu_model']}), load average "
        f"{m['load_before']:.2f} before, {m['load_after']:.2f} after; jax {m['jax']}, "
        f"torch {m['torch']}")
  print(f"peer settings: {result['settings']['captum']}")
  print(result["settings"]["jaxmm"])
  print(f"logits max |jaxmm - torch| = {result['logit_parity_max_abs_diff']:.2e}")
  cam, ig = result["map_parity"]["gradcam"], result["map_parity"]["ig_no_noise"]
  print(f"maps max |jaxmm - captum|: Grad-CAM {cam['max_abs_diff']:.2e} (relative "
        f"{cam['relative']:.1e}, the last timed call's); IG without noise {ig['max_abs_diff']:.2e}"
        f" (relative {ig['relative']:.1e}, {ig['examples']} examples, {args.steps} points); "
        f"SmoothGrad's noise draws differ between the libraries")
  for name in ("ig_smoothgrad_points_per_s", "gradcam_images_per_s"):
    values = result[name]
    print(f"{name:28s} jaxmm {values['jaxmm']:9.2f}  captum {values['captum']:9.2f}  "
          f"ratio {values['jaxmm'] / values['captum']:.2f}x")
  print("jaxmm first calls (compile + run): " + ", ".join(
      f"{k} {v:.1f}s" for k, v in result["first_call_s"].items()) +
      f"; median of {args.repeats} calls after {args.warmup} warm-up")
  for warning in result["warnings"]:
    print(f"WARNING: {warning}")


BENCHMARKS = {"saliency": (saliency_benchmark, print_saliency),
              "train": (train_benchmark.train_benchmark, train_benchmark.print_train)}


def int_at_least(minimum: int):
  """argparse type: an int >= minimum."""
  def parse_int(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value
  return parse_int


def model_names(text: str) -> tuple[str, ...]:
  """argparse type of --models: train_benchmark.parse_models."""
  try:
    return train_benchmark.parse_models(text)
  except ValueError as error:
    raise argparse.ArgumentTypeError(str(error)) from None


def add_common_flags(parser: argparse.ArgumentParser, batch: int | None, batch_help: str,
                     repeats: int, warmup: int, min_warmup: int) -> None:
  """Flags both benchmarks take; their defaults differ per benchmark."""
  parser.add_argument("--image_size", type=int_at_least(1), default=224)
  parser.add_argument("--batch", type=int_at_least(1), default=batch, help=batch_help)
  parser.add_argument("--repeats", type=int_at_least(1), default=repeats,
                      help=f"timed calls, the median is reported ({repeats})")
  parser.add_argument("--warmup", type=int_at_least(min_warmup), default=warmup,
                      help=f"untimed calls before timing ({warmup}; at least {min_warmup})")
  parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                      help="the torch side's images and model in channels_last (ResNets)")
  parser.add_argument("--xla_cpu_flags", action=argparse.BooleanOptionalAction, default=True,
                      help="add train_benchmark.RECOMMENDED_XLA_CPU_FLAGS to XLA_FLAGS")
  parser.add_argument("--fast_backward", action=argparse.BooleanOptionalAction, default=True,
                      help="jaxmm's ResNets take the custom strided-conv / max-pool gradients "
                      "of jaxmm.models.fast_backward (--no-fast_backward: XLA's own)")
  parser.add_argument("--json", default="", help="also write the numbers to this file")


def add_saliency_flags(parser: argparse.ArgumentParser) -> None:
  """Flags of the `saliency` benchmark."""
  # The first call is not timed: it includes jaxmm's compilation, reported apart.
  add_common_flags(parser, 2, "images (2)", repeats=3, warmup=1, min_warmup=1)
  parser.add_argument("--steps", type=int_at_least(2), default=16,
                      help="IG path points (captum's riemann_right needs 2 or more)")
  parser.add_argument("--samples", type=int_at_least(1), default=2)
  parser.add_argument("--path_chunk", type=int_at_least(0), default=0,
                      help="IG path points per chunk (0: --steps, the whole path in one pass, as "
                      "captum's internal_batch_size = batch x steps)")
  parser.add_argument("--sample_chunk", type=int_at_least(1), default=1)
  parser.add_argument("--captum_batch", type=int_at_least(0), default=0,
                      help="captum's internal_batch_size (0: batch x steps, one pass per sample)")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
  """Flags of the `train` benchmark."""
  # At least one warm-up step: jaxmm compiles ahead of the steps, but torch.compile compiles
  # in its first step, which --warmup=0 timed (a 226x "ratio" with 2 repeats).
  add_common_flags(parser, None, "examples per step (default 16 images / 8 sequences on CPU, "
                   "256 / 64 on GPU)", repeats=10, warmup=2, min_warmup=1)
  parser.add_argument("--models", type=model_names,
                      default=",".join(train_benchmark.MODEL_NAMES),
                      help=f"comma-separated, from {list(train_benchmark.MODEL_NAMES)}")
  parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                      help="compute dtype of both sides (auto: bfloat16 on GPU, float32 on CPU)")
  parser.add_argument("--torch_compile", choices=("auto", "on", "off"), default="auto",
                      help="auto: time eager and torch.compile, report the faster")
  parser.add_argument("--devices", type=int_at_least(1), default=1,
                      help="jaxmm trains data parallel over this many local devices; above 1 "
                      "the run is jaxmm-only, not a peer comparison (torch uses one device)")
  parser.add_argument("--bert_layers", type=int_at_least(1), default=12)
  parser.add_argument("--bert_hidden", type=int_at_least(1), default=768)
  parser.add_argument("--bert_heads", type=int_at_least(0), default=0, help="0: hidden / 64")
  parser.add_argument("--seq_len", type=int_at_least(1), default=128)
  parser.add_argument("--fast_batch_norm", action=argparse.BooleanOptionalAction, default=True,
                      help="jaxmm's ResNets train their BatchNorms with "
                      "jaxmm.models.batch_norm where it applies (--no-fast_batch_norm: flax's "
                      "nn.BatchNorm)")


def check_train_flags(parser: argparse.ArgumentParser, args) -> None:
  """Values that are fine alone but not together (parser.error)."""
  heads = args.bert_heads or max(args.bert_hidden // 64, 1)
  if "bert" in args.models and args.bert_hidden % heads:
    parser.error(f"--bert_hidden={args.bert_hidden} is not divisible by {heads} heads")
  if "bert" in args.models and args.seq_len > BERT_MAX_POSITIONS:
    parser.error(f"--seq_len={args.seq_len}: BERT has {BERT_MAX_POSITIONS} positions")
  if args.batch and args.batch % args.devices:
    parser.error(f"--batch={args.batch} is not divisible by --devices={args.devices}")


def parse(argv):
  parser = argparse.ArgumentParser(prog="python -m jaxmm.benchmark", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="which", required=True, metavar="{saliency,train}")
  sub = {"saliency": commands.add_parser("saliency",
                                         help="IG + SmoothGrad and Grad-CAM vs captum"),
         "train": commands.add_parser("train",
                                      help="training throughput vs transformers' PyTorch")}
  add_saliency_flags(sub["saliency"])
  add_train_flags(sub["train"])
  args, unknown = parser.parse_known_args(argv)
  if unknown:
    sub[args.which].error(f"unrecognized arguments: {' '.join(unknown)}"
                          f"{other_benchmark_hint(sub, args.which, unknown)}")
  if args.which == "train":
    check_train_flags(sub["train"], args)
  else:
    args.path_chunk = args.path_chunk or args.steps
  return args


def other_benchmark_hint(sub: dict, which: str, unknown: list[str]) -> str:
  """' (... apply to `train` only)' for the unknown flags the other benchmark takes."""
  other = next(name for name in sub if name != which)
  flags = {s for action in sub[other]._actions for s in action.option_strings}
  theirs = [arg.split("=")[0] for arg in unknown if arg.split("=")[0] in flags]
  return f" ({', '.join(theirs)}: `{other}` only)" if theirs else ""


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  # Before anything starts JAX's backend: XLA reads XLA_FLAGS once, then.
  train_benchmark.setup_environment(args)
  args.kept_host_memory = host_memory.keep_host_memory()  # both sides share this process
  fast_backward.ENABLED = args.fast_backward
  if args.which == "train":  # saliency's ResNet is in eval mode: no BatchNorm training
    batch_norm.ENABLED = args.fast_batch_norm
  run, show = BENCHMARKS[args.which]
  try:
    result = run(args)
  except train_benchmark.FlagError as error:  # found once JAX started (device count)
    print(f"python -m jaxmm.benchmark {args.which}: error: {error}", file=sys.stderr)
    return 2
  show(result, args)
  if args.json:
    write_text_atomic(args.json, json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
