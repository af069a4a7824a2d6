r"""Side-by-side performance against peer libraries, same weights, inputs and machine.

  python -m jaxmm.benchmark saliency [--image_size=224 --batch=2 --steps=16 --samples=2]
  python -m jaxmm.benchmark train [--models=resnet18,resnet50,bert --batch=16 --json=PATH]

saliency: ResNet-18 (transformers' PyTorch ResNetForImageClassification, randomly initialised,
converted to jaxmm with jaxmm.third_party.resnet_hf), IG + SmoothGrad path points per second
and Grad-CAM images per second, jaxmm vs captum, and the ratio. torch and captum are test-only
dependencies: install them with `pip install -e '.[test]'`. Each measurement is the median
of --repeats timed calls after a warm-up call (the warm-up includes jaxmm's compilation,
reported apart), jaxmm and captum taking turns call by call.

train: training images (ResNet-18, ResNet-50) or sequences (BERT) per second, jaxmm's
build_model + train_step vs transformers' PyTorch classes of the same sizes run with PyTorch's
fastest documented settings, the ratio, and on a GPU the model FLOP utilisation; see
jaxmm.train_benchmark. --json=PATH writes the numbers of either benchmark.

On CPU both benchmarks add train_benchmark.RECOMMENDED_XLA_CPU_FLAGS to XLA_FLAGS (XLA's
multi-threaded convolutions instead of YNNPACK's; --no-xla_cpu_flags leaves XLA_FLAGS alone).
"""
import argparse
import functools
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm import host_memory, train_benchmark
from jaxmm.data.atomic import write_text_atomic
from jaxmm.models import batch_norm, fast_backward, onednn_conv
from jaxmm.models.resnet import ResNet18
from jaxmm.saliency import cams, model_fns, smoothgrad
from jaxmm.saliency.targets import target_scores


def interleaved(pair: dict, repeats: int) -> dict:
  """{name: (first call s, median s)} of two callables: one untimed first call each (jaxmm's
  includes compilation), then `repeats` rounds timing each in turn, so a change in the
  machine's speed (a shared host) hits both sides alike."""
  steppers = {name: train_benchmark.Stepper(fn, lambda _: 0.0) for name, fn in pair.items()}
  measured = train_benchmark.measure_interleaved(steppers, 1, repeats)
  return {name: (m.warmup_s[0], m.step_s) for name, m in measured.items()}


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


def saliency_benchmark(args) -> dict:
  """IG + SmoothGrad points/s and Grad-CAM images/s, jaxmm and captum, one process."""
  import torch
  import captum.attr as captum_attr
  num_classes = 10
  device, sync = torch_device_and_sync()
  torch_model = torch_resnet18(num_classes)
  model, variables = jaxmm_resnet18_like(torch_model, num_classes)
  torch_model = torch_model.to(device)
  net = TorchLogits(torch_model)
  if args.channels_last:
    net = net.to(memory_format=torch.channels_last)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  x_torch = torch.tensor(images.transpose(0, 3, 1, 2), device=device)
  if args.channels_last:
    x_torch = x_torch.contiguous(memory_format=torch.channels_last)
  x = jnp.asarray(images)
  apply = model_fns.linen_apply_fn(model, variables, train=False)
  f = lambda v: apply(v)[0]
  with torch.no_grad():
    logits_torch = net(x_torch).cpu().numpy()
  logits = np.asarray(f(x))
  targets = np.argmax(logits_torch, -1)
  t = jnp.asarray(targets)
  parity = float(np.abs(logits - logits_torch).max())

  points = args.batch * args.steps * args.samples
  ig_sg = jax.jit(functools.partial(
      smoothgrad.ig_smoothgrad, f, steps=args.steps, num_samples=args.samples,
      rule="riemann_trapezoid", path_chunk_size=args.path_chunk,
      sample_chunk_size=args.sample_chunk))  # captum's rule below: the same points
  key = jax.random.key(0)
  nt = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(net))

  def torch_ig():
    attr = nt.attribute(
        x_torch, nt_type="smoothgrad", nt_samples=args.samples, stdevs=0.15,
        nt_samples_batch_size=args.samples, target=targets.tolist(), n_steps=args.steps,
        method="riemann_trapezoid",
        internal_batch_size=args.captum_batch or args.batch * args.steps)
    sync()
    return attr

  ig_times = interleaved({"jaxmm": lambda: jax.block_until_ready(ig_sg(x, t, key=key)),
                          "captum": torch_ig}, args.repeats)

  def gradcam(v, targets_):
    score = lambda logits: target_scores(logits, targets_)
    _, a, g = model_fns.layer_activations_and_gradients(apply, v, "stage4", score)
    return cams.gradient_cam("gradcam", a, g, size=v.shape[1:3])["cam"]

  jax_cam_fn = jax.jit(gradcam)  # inputs are arguments: XLA must not constant-fold the work
  layer_cam = captum_attr.LayerGradCam(net, torch_model.resnet.encoder.stages[3])

  def torch_cam():
    attr = layer_cam.attribute(x_torch, target=targets.tolist(), relu_attributions=True)
    attr = captum_attr.LayerAttribution.interpolate(attr, x_torch.shape[2:], "bilinear")
    sync()
    return attr

  cam_times = interleaved({"jaxmm": lambda: jax.block_until_ready(jax_cam_fn(x, t)),
                           "captum": torch_cam}, args.repeats)
  return {
      "torch_device": device,
      "logit_parity_max_abs_diff": parity,
      "ig_smoothgrad_points_per_s": {k: points / v[1] for k, v in ig_times.items()},
      "gradcam_images_per_s": {k: args.batch / v[1] for k, v in cam_times.items()},
      "first_call_s": {"jaxmm_ig_smoothgrad": ig_times["jaxmm"][0],
                       "jaxmm_gradcam": cam_times["jaxmm"][0]},
  }


def print_saliency(result: dict, args) -> None:
  import torch
  print(f"ResNet-18 {args.image_size}x{args.image_size}, batch {args.batch}, IG {args.steps} "
        f"steps x SmoothGrad {args.samples} samples; jax on {jax.devices()[0].device_kind}, "
        f"torch on {result['torch_device']}; {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"threads {torch.get_num_threads()}")
  print(f"peer settings: captum NoiseTunnel(IntegratedGradients) with internal_batch_size = "
        f"{args.captum_batch or args.batch * args.steps}, nt_samples_batch_size = samples, "
        f"LayerGradCam + bilinear interpolate; eval mode, torch default threads"
        f"{', channels_last' if args.channels_last else ''}"
        f"{', cudnn.benchmark' if result['torch_device'] == 'cuda' else ''}")
  print(f"jaxmm: path_chunk {args.path_chunk}, sample_chunk {args.sample_chunk}; "
        f"{onednn_conv.describe() if fast_backward.ENABLED else 'XLA convolutions'}; XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r} (--no-xla_cpu_flags: without the recommended CPU "
        f"flags); host memory "
        f"{'kept (both sides: jaxmm.host_memory)' if args.kept_host_memory else 'as is'}")
  print(f"logits max |jaxmm - torch| = {result['logit_parity_max_abs_diff']:.2e}")
  for name in ("ig_smoothgrad_points_per_s", "gradcam_images_per_s"):
    values = result[name]
    print(f"{name:28s} jaxmm {values['jaxmm']:9.2f}  captum {values['captum']:9.2f}  "
          f"ratio {values['jaxmm'] / values['captum']:.2f}x")
  print("jaxmm first calls (compile + run): " + ", ".join(
      f"{k} {v:.1f}s" for k, v in result["first_call_s"].items()))


BENCHMARKS = {"saliency": (saliency_benchmark, print_saliency),
              "train": (train_benchmark.train_benchmark, train_benchmark.print_train)}
# Defaults that differ per benchmark (None on the command line: not given).
DEFAULTS = {"saliency": {"batch": 2, "repeats": 3}, "train": {"batch": 0, "repeats": 10}}


def parse(argv):
  parser = argparse.ArgumentParser(prog="python -m jaxmm.benchmark", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("which", choices=sorted(BENCHMARKS))
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=None,
                      help="saliency: images (2); train: examples per step (default 16 "
                      "images / 8 sequences on CPU, 256 / 64 on GPU)")
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--samples", type=int, default=2)
  parser.add_argument("--path_chunk", type=int, default=0,
                      help="IG path points per chunk (0: --steps, the whole path in one pass, as "
                      "captum's internal_batch_size = batch x steps)")
  parser.add_argument("--sample_chunk", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls, the median is reported (saliency 3, train 10)")
  parser.add_argument("--captum_batch", type=int, default=0,
                      help="captum's internal_batch_size (0: batch x steps, one pass per sample)")
  parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
  add_train_flags(parser)
  args = parser.parse_args(argv)
  for key, value in DEFAULTS[args.which].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.path_chunk = args.path_chunk or args.steps
  return args


def add_train_flags(parser: argparse.ArgumentParser) -> None:
  """Flags of the `train` benchmark."""
  parser.add_argument("--models", default=",".join(train_benchmark.MODEL_NAMES),
                      help=f"comma-separated, from {list(train_benchmark.MODEL_NAMES)}")
  parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                      help="compute dtype of both sides (auto: bfloat16 on GPU, float32 on CPU)")
  parser.add_argument("--torch_compile", choices=("auto", "on", "off"), default="auto",
                      help="auto: time eager and torch.compile, report the faster")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
  parser.add_argument("--bert_layers", type=int, default=12)
  parser.add_argument("--bert_hidden", type=int, default=768)
  parser.add_argument("--bert_heads", type=int, default=0, help="0: hidden / 64")
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--xla_cpu_flags", action=argparse.BooleanOptionalAction, default=True,
                      help="add train_benchmark.RECOMMENDED_XLA_CPU_FLAGS to XLA_FLAGS "
                      "(both benchmarks)")
  parser.add_argument("--fast_backward", action=argparse.BooleanOptionalAction, default=True,
                      help="jaxmm's ResNets take the custom strided-conv / max-pool gradients "
                      "of jaxmm.models.fast_backward (--no-fast_backward: XLA's own)")
  parser.add_argument("--fast_batch_norm", action=argparse.BooleanOptionalAction, default=True,
                      help="jaxmm's ResNets train their BatchNorms with "
                      "jaxmm.models.batch_norm where it applies (--no-fast_batch_norm: flax's "
                      "nn.BatchNorm)")
  parser.add_argument("--json", default="", help="also write the numbers to this file")


def main(argv=None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  # Before anything starts JAX's backend: XLA reads XLA_FLAGS once, then.
  train_benchmark.setup_environment(args)
  args.kept_host_memory = host_memory.keep_host_memory()  # both sides share this process
  fast_backward.ENABLED = args.fast_backward
  batch_norm.ENABLED = args.fast_batch_norm
  run, show = BENCHMARKS[args.which]
  result = run(args)
  show(result, args)
  if args.json:
    write_text_atomic(args.json, json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
