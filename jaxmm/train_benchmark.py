r"""Training throughput, jaxmm vs PyTorch (transformers' classes), one process, one device.

  python -m jaxmm.benchmark train [--models=resnet18,resnet50,bert] [--batch=N]
      [--dtype=auto|float32|bfloat16] [--torch_compile=auto|on|off] [--repeats=10]
      [--bert_layers=12 --bert_hidden=768 --seq_len=128] [--no-channels_last] [--devices=1]
      [--json=PATH]

For each model both sides train the same architecture on the same random batch with a full
step: forward in train mode (BatchNorm statistics update, dropout), softmax cross-entropy,
backward and an optimizer update (SGD with momentum 0.9 for the ResNets, AdamW for BERT).
  jaxmm: `build_model` with an image-only (ResNet-18 / ResNet-50) or text-only (BERT with its
         pooler) config and a single Dense head, stepped by `jaxmm.train.steps.train_step`
         jitted with the state donated, as the training loop does. `--dtype` is the model's
         compute dtype; parameters and optimizer state stay float32.
  torch: transformers' ResNetForImageClassification / BertForSequenceClassification of the
         same sizes, run the way its documentation says is fastest: channels_last (ResNets;
         --no-channels_last: contiguous NCHW), fused optimizers, torch.compile when it is
         faster than eager (`auto` times both), autocast for bfloat16, cudnn.benchmark and TF32
         on GPU, default threads on CPU.
Both sides train on one device, jaxmm on the first local one. `--devices=N` (N > 1) trains
jaxmm data parallel over N local devices while torch stays on one: a jaxmm-only measurement
that the report and JSON mark as no peer comparison (its MFU divides by N x the peak).
Each side: compilation and warm-up calls are reported apart, then the median of --repeats
timed steps, the sides taking turns step by step (jaxmm blocks on the new state; torch
synchronises on GPU). On a GPU the model FLOP utilisation uses, for both sides, the FLOPs of
jaxmm's step counted from its jaxpr (`traced_flops`). On CPU the benchmark sets
RECOMMENDED_XLA_CPU_FLAGS before JAX starts (--no-xla_cpu_flags: XLA_FLAGS as given) and prints
them.
"""
import functools
import math
import os
import re
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

# XLA CPU flags the benchmark sets before JAX starts, and recommends to jaxmm users. By
# default XLA hands each convolution to YNNPACK, which here runs 64-output-channel
# convolutions on one thread (3x3, 16x56x56x64: 18 ms on 1 or 2 cores, while 128 channels run
# twice as fast on 2 cores) and computes weight gradients at about a third of oneDNN's speed.
# Without that fusion type XLA's own multi-threaded (Eigen) convolutions run them: training
# steps at batch 16, 224 px, 2-core CPU: ResNet-18 0.96 -> 0.72 s, ResNet-50 4.5 -> 3.0 s,
# losses equal to 4 digits. (Two XLA CPU devices, data parallel, were tried: -10% time
# without this flag, slower with it.)
RECOMMENDED_XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
MODEL_NAMES = ("resnet18", "resnet50", "bert")  # the default --models
TEST_MODEL_NAMES = ("resnet_tiny",)  # also accepted: a seconds-long image run for tests
IMAGE_CLASSES = 1000  # ImageNet-sized head, as ResNetForImageClassification's default
TEXT_CLASSES = 2
BERT_VOCAB = 30522
# torch modes timed per --torch_compile; the faster one is reported.
TORCH_MODES = {"off": ("eager",), "on": ("compile",), "auto": ("eager", "compile")}
# Default batch per step when --batch is not given: (cpu, gpu).
DEFAULT_BATCH = {"image": (16, 256), "text": (8, 64)}
# Dense peak FLOP/s (bfloat16, float32 = TF32) by GPU model, keyed by gpu_model_key of JAX's
# device_kind (CUDA's device name): an exact key, so "H100 NVL" does not take the H100 SXM's
# peak nor "RTX A1000" the A100's; a GPU not listed (or a MIG slice) has MFU "unknown peak".
# NVIDIA's spec tables list Hopper figures with sparsity; dense is half, rounded down:
# nvidia.com/en-us/data-center/h100 (SXM BF16 1,979 / TF32 989; PCIe 1,513 / 756; NVL 1,671 /
# 835) and /h200 (SXM as H100 SXM; NVL as H100 NVL). A100 (SXM4 and PCIe, 40 and 80 GB), dense
# as listed: BF16 312, TF32 156 (nvidia.com/en-us/data-center/a100).
PEAK_FLOPS = {("A100",): (312e12, 156e12), ("A100", "PCIE"): (312e12, 156e12),
              ("H100",): (989e12, 494e12), ("H100", "PCIE"): (756e12, 378e12),
              ("H100", "NVL"): (835e12, 417e12),
              ("H200",): (989e12, 494e12), ("H200", "NVL"): (835e12, 417e12)}
# Tokens of a device name that do not change the peak: the vendor, memory size and type, and
# the SXM form factor (the default variant of each model above).
NAME_TOKENS_IGNORED = re.compile(r"NVIDIA|\d+GB?|HBM\d*E?|SXM\d*")


class ModelSpec(NamedTuple):
  """One benchmarked architecture: its modality, sizes on both sides and optimizer."""
  modality: str              # "image" | "text"
  jaxmm_encoder: dict        # build_model's modality section
  hf_layout: dict            # transformers config keyword arguments
  optimizer: str             # "sgd" (momentum 0.9) | "adamw" (weight decay 0.01)
  learning_rate: float


# transformers ResNetConfig layouts equal to jaxmm's ResNet18 / ResNet50 / ResNetTiny.
RESNET_HF = {
    "resnet18": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                     layer_type="basic"),
    "resnet50": dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                     depths=[3, 4, 6, 3], layer_type="bottleneck"),
    "resnet_tiny": dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                        layer_type="basic"),
}


def model_spec(name: str, args) -> ModelSpec:
  """The spec of `name` (MODEL_NAMES, TEST_MODEL_NAMES); BERT's sizes come from the --bert_*
  and --seq_len flags."""
  if name in RESNET_HF:
    return ModelSpec("image", {"encoder": name}, RESNET_HF[name], "sgd", 0.1)
  if name == "bert":
    heads = args.bert_heads or max(args.bert_hidden // 64, 1)
    dims = dict(num_layers=args.bert_layers, hidden_size=args.bert_hidden, num_heads=heads,
                intermediate_size=4 * args.bert_hidden)
    hf = dict(num_hidden_layers=dims["num_layers"], hidden_size=dims["hidden_size"],
              num_attention_heads=heads, intermediate_size=dims["intermediate_size"])
    return ModelSpec("text", {"encoder": "bert", "vocab_size": BERT_VOCAB, "use_pooler": True,
                              "dropout": 0.1, **dims}, hf, "adamw", 1e-4)
  raise ValueError(f"unknown --models entry {name!r}; valid models: "
                   f"{list(MODEL_NAMES + TEST_MODEL_NAMES)}")


def parse_models(text: str) -> tuple[str, ...]:
  """'resnet18,bert' -> ("resnet18", "bert"); an unknown name raises listing the valid ones."""
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  valid = MODEL_NAMES + TEST_MODEL_NAMES
  unknown = [n for n in names if n not in valid]
  if not names or unknown:
    raise ValueError(f"--models={text!r}: unknown {unknown or 'nothing given'}; valid "
                     f"models: {list(valid)}")
  return names


def configure_jax_env(flags: tuple[str, ...]) -> str:
  """Sets what JAX reads once, when its backend starts (the first computation or device
  query), so it must run before that: appends `flags` to XLA_FLAGS (those the user did not
  set already) and, unless the user chose, turns off JAX's preallocation of 75% of GPU
  memory, which would starve PyTorch in the same process. Returns XLA_FLAGS."""
  current = os.environ.get("XLA_FLAGS", "").split()
  given = {f.split("=")[0] for f in current}
  os.environ["XLA_FLAGS"] = " ".join(current + [f for f in flags
                                                if f.split("=")[0] not in given])
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  return os.environ["XLA_FLAGS"]


def setup_environment(args) -> str:
  """configure_jax_env with RECOMMENDED_XLA_CPU_FLAGS (none with --no-xla_cpu_flags)."""
  return configure_jax_env(RECOMMENDED_XLA_CPU_FLAGS if args.xla_cpu_flags else ())


# ---------------------------------------------------------------- inputs

def random_batch(spec: ModelSpec, batch: int, args, seed: int = 0) -> dict[str, np.ndarray]:
  """One fixed batch both sides train on: images NHWC float32 or token ids, int labels."""
  rng = np.random.default_rng(seed)
  if spec.modality == "image":
    size = args.image_size
    return {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, IMAGE_CLASSES, batch).astype(np.int32)}
  return {"text_ids": rng.integers(0, BERT_VOCAB, (batch, args.seq_len)).astype(np.int32),
          "text_mask": np.ones((batch, args.seq_len), np.int32),
          "label": rng.integers(0, TEXT_CLASSES, batch).astype(np.int32)}


def num_classes(spec: ModelSpec) -> int:
  return IMAGE_CLASSES if spec.modality == "image" else TEXT_CLASSES


# ---------------------------------------------------------------- timing

class Stepper(NamedTuple):
  """One side ready to train: `sync(step())` runs a step, waits for it, returns its loss.
  setup_s: compilation done before the first step (jaxmm compiles ahead of time)."""
  step: Callable[[], Any]
  sync: Callable[[Any], float]
  setup_s: float = 0.0


class Measurement(NamedTuple):
  """One side's timing: setup (compilation ahead of the first step, jaxmm only), the warm-up
  steps (torch.compile compiles in the first), the median timed step, and every step's loss."""
  setup_s: float
  warmup_s: list[float]
  step_s: float
  losses: list[float]


def timed_step(stepper: Stepper) -> tuple[float, float]:
  """(seconds, loss) of one step, waited for."""
  start = time.perf_counter()
  loss = stepper.sync(stepper.step())
  return time.perf_counter() - start, loss


def measure_interleaved(steppers: dict[str, Stepper], warmup: int,
                        repeats: int) -> dict[str, Measurement]:
  """Each side's `warmup` steps, then `repeats` rounds of one timed step per side in turn
  (A B A B ...): a change in the machine's speed (other work on a shared host) then hits
  every side alike instead of whichever ran last."""
  warm = {name: [timed_step(s) for _ in range(warmup)] for name, s in steppers.items()}
  timed = {name: [] for name in steppers}
  for _ in range(repeats):
    for name, stepper in steppers.items():
      timed[name].append(timed_step(stepper))
  return {name: Measurement(steppers[name].setup_s, [t for t, _ in warm[name]],
                            statistics.median(t for t, _ in timed[name]),
                            [loss for _, loss in warm[name] + timed[name]])
          for name in steppers}


# ---------------------------------------------------------------- jaxmm side

def jaxmm_model_config(spec: ModelSpec, dtype: str) -> dict:
  """build_model config: one modality, its encoder, one Dense head (no hidden
  layers, no dropout: the torch peers have none before their classifier)."""
  return {"modalities": (spec.modality,), "num_classes": num_classes(spec), "dtype": dtype,
          spec.modality: dict(spec.jaxmm_encoder), "head": {"hidden": (), "dropout": 0.0}}


def jaxmm_optimizer(spec: ModelSpec, params: Any):
  """The optax transformation the training loop would build (constant learning rate)."""
  import ml_collections
  from jaxmm.train import optimizers
  options = ({"momentum": 0.9} if spec.optimizer == "sgd" else {"weight_decay": 0.01})
  config = ml_collections.ConfigDict({"name": spec.optimizer, "learning_rate":
                                      spec.learning_rate, "schedule": "constant", **options})
  return optimizers.make_optimizer(config, params, total_steps=1, warmup_steps=0)[0]


def jaxmm_setup(spec: ModelSpec, batch: dict, dtype: str, seed: int = 0):
  """(model parameter count, TrainState, jitted donated train step), as loop.setup_run and
  loop.create_state build them."""
  import jax
  import jax.numpy as jnp
  from jaxmm.models import build
  from jaxmm.train import losses, steps
  model = build.build_model(jaxmm_model_config(spec, dtype))
  init_key, dropout_key, step_key = jax.random.split(jax.random.key(seed), 3)
  sample = {k: v[:2] for k, v in steps.model_inputs(batch).items()}  # as loop.sample_batch
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": init_key, "dropout": dropout_key}, sample)
  params = variables["params"]
  tx = jaxmm_optimizer(spec, params)
  state = steps.TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                           batch_stats=variables.get("batch_stats", {}),
                           opt_state=tx.init(params), rng=jax.random.key_data(step_key))
  train_fn = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                       loss_fn=losses.make_loss_fn(False)),
                     donate_argnums=(0,))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return count, state, train_fn


def _jaxpr_flops(jaxpr) -> float:
  """2 x the multiply-adds of the dot_general / conv_general_dilated equations (and jaxmm's
  conv primitives, `conv_ops.model_flops`) of a jaxpr
  (those with the zeros of an input dilation left out), recursing into sub-jaxprs (jit,
  custom gradients, remat; a scan's body x its length, the costliest branch of a cond, a
  while body once)."""
  from jaxmm.models import conv_ops
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if (flops := conv_ops.model_flops(eqn)) is not None:  # jaxmm's convs and their gradients
      total += flops
      continue
    if name == "dot_general":
      lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
      (contract, _), (batch, _) = eqn.params["dimension_numbers"]
      total += 2 * math.prod(lhs) * math.prod(rhs) / (
          math.prod([lhs[i] for i in contract]) * math.prod([lhs[i] for i in batch]))
      continue
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      # An input dilation (the input gradient of a strided conv) inserts zeros: of the
      # products with them, only 1 / prod(lhs_dilation) are work a model needs.
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / (
          out_features * math.prod(eqn.params["lhs_dilation"]))
      continue
    subs = [_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params)]
    if name == "cond":
      total += max(subs, default=0.0)
    else:
      total += sum(subs) * (eqn.params["length"] if name == "scan" else 1)
  return total


def _sub_jaxprs(params: dict):
  """The jaxprs among an equation's parameters (Jaxpr, ClosedJaxpr, or sequences of them)."""
  from jax.extend import core
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, core.Jaxpr):
        yield item


def traced_flops(fn: Callable, *args) -> float:
  """FLOPs of one call of `fn(*args)` as traced: 2 per multiply-add of its matrix products
  and convolutions, forward and backward. A recomputed (remat) part would count twice, so
  this is the model FLOPs of MFU only for a step without recomputation, as jaxmm's train
  step is. Counted from the jaxpr because XLA's cost analysis of a compiled GPU program
  leaves out the convolutions and matrix products it hands to cuDNN / cuBLAS (it gave 0.4
  GFLOP per ResNet-50 training image on an H200 instead of about 24)."""
  import jax
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


class FlagError(ValueError):
  """A flag value that can only be checked once JAX has started (benchmark.main reports it
  as a usage error)."""


def first_devices(available: list, count: int) -> list:
  """The first `count` of the `available` devices; FlagError when there are fewer."""
  if not 1 <= count <= len(available):
    raise FlagError(f"--devices={count}: this host has {len(available)} local device(s)")
  return list(available[:count])


def jaxmm_mesh(devices: int = 1):
  """A 1-D data mesh over the first `devices` local devices. One by default, as torch trains
  on one: more is jaxmm's data parallelism, not a peer comparison."""
  import jax
  from jax.sharding import Mesh
  from jaxmm.train import sharding
  return Mesh(np.asarray(first_devices(jax.local_devices(), devices)), (sharding.DATA_AXIS,))


def jaxmm_stepper(spec: ModelSpec, batch_np: dict, dtype: str,
                  devices: int = 1) -> tuple[Stepper, dict]:
  """jaxmm's train step compiled ahead of time for `batch_np`, state threaded through the
  donated calls, on `devices` local devices (jaxmm_mesh): (stepper, {"params": count,
  "flops_per_step": traced_flops of the step})."""
  import jax
  from jaxmm.train import sharding
  mesh = jaxmm_mesh(devices)
  sharding.check_batch_size(len(batch_np["label"]), mesh, "--batch")
  count, state, train_fn = jaxmm_setup(spec, batch_np, dtype)
  # As the training loop: state replicated, batch sharded over the mesh.
  state = sharding.replicate(state, mesh)
  batch = sharding.shard_batch(batch_np, mesh)
  start = time.perf_counter()
  traced = train_fn.trace(state, batch)  # one trace: compiled below and counted for the FLOPs
  compiled = traced.lower().compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], batch)
    return holder["state"], metrics

  def sync(out) -> float:
    _, metrics = jax.block_until_ready(out)
    return float(metrics["loss"])

  return (Stepper(step, sync, compile_s),
          {"params": count, "flops_per_step": _jaxpr_flops(traced.jaxpr.jaxpr)})


# ---------------------------------------------------------------- torch side

def torch_model(spec: ModelSpec):
  """transformers' model of the spec's architecture, randomly initialised, train mode."""
  import torch
  import transformers
  torch.manual_seed(0)
  if spec.modality == "image":
    config = transformers.ResNetConfig(**spec.hf_layout, num_labels=IMAGE_CLASSES)
    return transformers.ResNetForImageClassification(config).train()
  # classifier_dropout 0: jaxmm's single Dense head has no dropout before it.
  config = transformers.BertConfig(vocab_size=BERT_VOCAB, max_position_embeddings=512,
                                   type_vocab_size=2, hidden_dropout_prob=0.1,
                                   attention_probs_dropout_prob=0.1, classifier_dropout=0.0,
                                   num_labels=TEXT_CLASSES, **spec.hf_layout)
  return transformers.BertForSequenceClassification(config).train()


def torch_optimizer(spec: ModelSpec, model):
  """SGD (momentum 0.9) or AdamW (weight decay 0.01), fused: PyTorch's fastest implementation."""
  import torch
  if spec.optimizer == "sgd":
    return torch.optim.SGD(model.parameters(), lr=spec.learning_rate, momentum=0.9, fused=True)
  return torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01,
                           fused=True)


def torch_inputs(spec: ModelSpec, batch: dict, device, channels_last: bool) -> tuple[dict, Any]:
  """(model keyword inputs, int64 labels) as torch tensors on `device`."""
  import torch
  labels = torch.tensor(batch["label"], dtype=torch.int64, device=device)
  if spec.modality == "image":
    images = torch.tensor(batch["image"].transpose(0, 3, 1, 2), device=device)
    if channels_last:
      images = images.contiguous(memory_format=torch.channels_last)
    return {"pixel_values": images}, labels
  return {"input_ids": torch.tensor(batch["text_ids"], dtype=torch.int64, device=device),
          "attention_mask": torch.tensor(batch["text_mask"], dtype=torch.int64,
                                         device=device)}, labels


def torch_step_fn(model, optimizer, inputs: dict, labels, autocast_dtype) -> Callable:
  """One training step as a PyTorch user writes it; returns the detached loss."""
  import torch
  device_type = labels.device.type

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
      logits = model(**inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def torch_sync(loss) -> float:
  import torch
  if loss.device.type == "cuda":
    torch.cuda.synchronize()
  return float(loss)


def torch_stepper(spec: ModelSpec, batch: dict, device: str, dtype: str, compiled: bool,
                  channels_last: bool = True) -> tuple[Stepper, int]:
  """transformers' model ready to train on `batch`, eager or torch.compile'd (compiling at
  its first step), channels_last for images unless told not to: (stepper, parameter count)."""
  import torch
  channels_last = channels_last and spec.modality == "image"
  model = torch_model(spec).to(device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  optimizer = torch_optimizer(spec, model)
  inputs, labels = torch_inputs(spec, batch, device, channels_last)
  autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
  step = torch_step_fn(torch.compile(model) if compiled else model, optimizer, inputs,
                       labels, autocast_dtype)
  return Stepper(step, torch_sync), sum(p.numel() for p in model.parameters())


def configure_torch(device: str, dtype: str) -> list[str]:
  """Sets PyTorch's documented GPU speed switches; returns the settings to print."""
  import torch
  settings = [f"torch {torch.__version__}"]
  if device == "cuda":
    torch.backends.cudnn.benchmark = True
    settings.append("cudnn.benchmark")
    if dtype == "float32":
      torch.set_float32_matmul_precision("high")
      settings.append("TF32 matmuls")
  else:
    settings.append(f"{torch.get_num_threads()} threads")
  return settings


# ---------------------------------------------------------------- one model, both sides

def gpu_model_key(device_kind: str) -> tuple[str, ...]:
  """A GPU's name as the tokens that set its peak: "NVIDIA H100 80GB HBM3" -> ("H100",),
  "NVIDIA A100-SXM4-40GB" -> ("A100",), "NVIDIA H100 NVL" -> ("H100", "NVL"),
  "NVIDIA RTX A1000" -> ("RTX", "A1000")."""
  tokens = re.split(r"[\s_-]+", device_kind.strip().upper())
  return tuple(t for t in tokens if t and not NAME_TOKENS_IGNORED.fullmatch(t))


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one listed GPU for the compute dtype (float32 = TF32); else None."""
  peaks = PEAK_FLOPS.get(gpu_model_key(device_kind))
  if peaks is None:
    return None
  return peaks[0] if dtype == "bfloat16" else peaks[1]


def side_record(m: Measurement, batch: int, flops: float | None, peak: float | None) -> dict:
  """JSON-ready numbers of one side: examples/s, step and warm-up times, losses, MFU (`peak`:
  the peak of every device the side trains on)."""
  record = {"per_s": batch / m.step_s, "step_s": m.step_s, "setup_s": m.setup_s,
            "warmup_s": m.warmup_s, "losses": m.losses,
            "finite_losses": all(math.isfinite(loss) for loss in m.losses)}
  if flops:
    record["model_tflops_per_s"] = flops / m.step_s / 1e12
  if flops and peak:
    record["mfu"] = flops / m.step_s / peak
  return record


def sizes_text(spec: ModelSpec, batch: int, args) -> str:
  """The sizes both sides train at, for the report."""
  if spec.modality == "image":
    return f"{args.image_size}x{args.image_size} images, batch {batch}, {IMAGE_CLASSES} classes"
  enc = spec.jaxmm_encoder
  return (f"{enc['num_layers']} layers, hidden {enc['hidden_size']}, {enc['num_heads']} heads, "
          f"seq {args.seq_len}, batch {batch}, vocab {BERT_VOCAB}, {TEXT_CLASSES} classes")


def progress(text: str) -> None:
  """A progress line on stderr: a full run takes minutes and prints its report at the end."""
  print(text, file=sys.stderr, flush=True)


def benchmark_model(name: str, args, machine: dict) -> dict:
  """Both sides' training throughput for one model (see the module docstring)."""
  spec = model_spec(name, args)
  batch_size = args.batch or DEFAULT_BATCH[spec.modality][machine["platform"] != "cpu"]
  if batch_size % args.devices:
    raise FlagError(f"--batch {batch_size} is not divisible by --devices={args.devices}")
  batch = random_batch(spec, batch_size, args)
  dtype = machine["dtype"]
  progress(f"{name}: compiling jaxmm's train step")
  steppers = {}
  steppers["jaxmm"], info = jaxmm_stepper(spec, batch, dtype, args.devices)
  for mode in TORCH_MODES[args.torch_compile]:
    steppers[mode], torch_params = torch_stepper(spec, batch, machine["torch_device"], dtype,
                                                 mode == "compile", args.channels_last)
  progress(f"{name}: {args.warmup} warm-up + {args.repeats} timed steps of jaxmm, torch "
           f"{' and torch '.join(TORCH_MODES[args.torch_compile])}")
  measured = measure_interleaved(steppers, args.warmup, args.repeats)
  flops = info["flops_per_step"]
  peak = peak_flops(machine["device_kind"], dtype) if machine["platform"] == "gpu" else None
  record = functools.partial(side_record, batch=batch_size, flops=flops)
  jaxmm = record(measured.pop("jaxmm"), peak=peak and peak * args.devices)
  mode = min(measured, key=lambda k: measured[k].step_s)
  torch_modes = {k: record(v, peak=peak) for k, v in measured.items()}
  nonfinite = [side for side, r in {"jaxmm": jaxmm, **torch_modes}.items()
               if not r["finite_losses"]]
  return {"model": name, "unit": "images" if spec.modality == "image" else "sequences",
          "sizes": sizes_text(spec, batch_size, args), "batch": batch_size, "dtype": dtype,
          "optimizer": spec.optimizer, "learning_rate": spec.learning_rate,
          "params": {"jaxmm": info["params"], "torch": torch_params},
          "jaxmm_devices": args.devices, "peer_comparison": args.devices == 1,
          "torch_compile": args.torch_compile,
          "torch_channels_last": args.channels_last and spec.modality == "image",
          "flops_per_step": flops, "peak_flops": peak, "jaxmm": jaxmm,
          "torch": {**torch_modes[mode], "mode": mode, "modes": torch_modes},
          "ratio": jaxmm["per_s"] / torch_modes[mode]["per_s"],
          "warnings": [f"{name}: non-finite losses ({', '.join(nonfinite)}): the timed steps "
                       f"do not train the model; their speed may not be representative"]
                      if nonfinite else []}


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
  import platform
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def host_info(args) -> dict:
  """What both benchmarks report of the machine: platform, device kind and count, CPUs,
  versions, XLA_FLAGS, where torch runs and with how many threads, the load average."""
  import jax
  import torch
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "cpu_model": cpu_model(), "jax": jax.__version__, "torch": torch.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
          "torch_threads": torch.get_num_threads(),
          "kept_host_memory": bool(getattr(args, "kept_host_memory", False)),
          "load_before": os.getloadavg()[0]}


def machine_info(args) -> dict:
  """host_info, the compute dtype and both sides' global training settings."""
  from jaxmm.models import fast_backward
  from jaxmm.train import writer
  host = host_info(args)
  dtype = args.dtype if args.dtype != "auto" else ("float32" if host["platform"] == "cpu"
                                                   else "bfloat16")
  return {**host, "dtype": dtype, "fast_backward": fast_backward.ENABLED,
          **writer.step_choices(),
          "torch_settings": configure_torch(host["torch_device"], dtype)}


def train_benchmark(args) -> dict:
  """Every model of --models, both sides: {"machine": ..., "models": [per-model records],
  "warnings": [...]}.

  The 1-minute load average before and after says whether other work shared the machine.
  """
  import jax
  first_devices(jax.local_devices(), args.devices)  # before building anything
  machine = machine_info(args)
  models = [benchmark_model(name, args, machine) for name in args.models]
  return {"machine": {**machine, "load_after": os.getloadavg()[0]}, "models": models,
          "warnings": [w for model in models for w in model["warnings"]]}


# ---------------------------------------------------------------- output

def side_line(label: str, side: dict, unit: str, settings: str) -> str:
  warm = " ".join(f"{t:.2f}" for t in side["warmup_s"])
  setup = f"compile {side['setup_s']:.1f} s, " if side["setup_s"] else ""
  return (f"  {label:6s} {side['per_s']:9.2f} {unit}/s  step {side['step_s']:.3f} s "
          f"(median)  {setup}warm-up {warm} s  [{settings}]")


# Why torch ran in the mode it did, per --torch_compile.
TORCH_MODE_REASONS = {"off": "eager: --torch_compile=off, torch.compile not timed",
                      "on": "torch.compile: --torch_compile=on, eager not timed"}


def torch_mode_text(model: dict) -> str:
  """The torch mode reported, why, and each timed mode's speed and first step."""
  modes = model["torch"]["modes"]
  mode_text = "; ".join(f"{k} {v['per_s']:.2f}/s, first step {v['warmup_s'][0]:.1f} s"
                        if v["warmup_s"] else f"{k} {v['per_s']:.2f}/s" for k, v in modes.items())
  if model["torch_compile"] in TORCH_MODE_REASONS:
    return f"{TORCH_MODE_REASONS[model['torch_compile']]} ({mode_text})"
  used = "torch.compile" if model["torch"]["mode"] == "compile" else "eager"
  return f"{used} used: the faster with --torch_compile=auto ({mode_text})"


def torch_settings(model: dict, machine: dict) -> str:
  """Which torch mode was used and why, plus the settings that applied."""
  parts = [torch_mode_text(model)]
  if model["unit"] == "images":
    parts.append("channels_last" if model["torch_channels_last"]
                 else "contiguous NCHW (--no-channels_last)")
  parts.append("autocast bfloat16" if model["dtype"] == "bfloat16" else "float32, no autocast")
  parts.append(f"fused {'SGD' if model['optimizer'] == 'sgd' else 'AdamW'}")
  return ", ".join(parts + machine["torch_settings"] + ["1 device"])


def devices_text(model: dict, machine: dict) -> str:
  """Where jaxmm trained: one device as torch, or data parallel (no peer comparison)."""
  n, platform = model["jaxmm_devices"], machine["platform"]
  if n == 1:
    return f"1 {platform} device (of {machine['device_count']}), as torch"
  return (f"data parallel over {n} {platform} devices (--devices={n}: jaxmm only, torch "
          f"uses 1; not a peer comparison)")


def jaxmm_settings(model: dict, machine: dict) -> str:
  parts = ["build_model + train_step, jit with donated state", devices_text(model, machine),
           f"compute {model['dtype']}", machine["update_guard"]]
  if model["unit"] == "images":
    parts.append("fast_backward gradients" if machine["fast_backward"]
                 else "XLA's conv / max-pool gradients (--no-fast_backward)")
    if machine["fast_backward"]:
      parts.append(machine["convolutions"])
    parts.append(machine["batch_norm"])
  if machine["platform"] == "cpu":
    parts.append(f"XLA_FLAGS={machine['xla_flags']!r}")
  return ", ".join(parts)


def ratio_line(model: dict, repeats: int) -> str:
  n = model["jaxmm_devices"]
  if n == 1:
    return (f"  ratio jaxmm / torch = {model['ratio']:.2f}x  (median of {repeats} steps each, "
            f"one device each)")
  return (f"  ratio jaxmm ({n} devices) / torch (1 device) = {model['ratio']:.2f}x: NOT a peer "
          f"comparison (--devices={n} is jaxmm-only data parallelism)")


def mfu_line(model: dict) -> str | None:
  """Model FLOP utilisation of both sides (GPU), or None without FLOPs; jaxmm's divides by
  the peak of all its devices."""
  if model["flops_per_step"] is None:
    return None
  if model["peak_flops"] is None:
    return (f"  model FLOPs/step {model['flops_per_step']:.3g} (traced): jaxmm "
            f"{model['jaxmm']['model_tflops_per_s']:.2f} TFLOP/s, torch "
            f"{model['torch']['model_tflops_per_s']:.2f} TFLOP/s; MFU: unknown peak")
  n = model["jaxmm_devices"]
  return (f"  MFU jaxmm {100 * model['jaxmm']['mfu']:.1f}%"
          f"{f' (of {n} x peak)' if n > 1 else ''}, torch {100 * model['torch']['mfu']:.1f}% "
          f"(model FLOPs/step {model['flops_per_step']:.3g}, traced; peak "
          f"{model['peak_flops'] / 1e12:.0f} TFLOP/s {model['dtype']} dense per device)")


def print_train(result: dict, args) -> None:
  """Human-readable report: machine, then per model both sides, the ratio and MFU."""
  m = result["machine"]
  print(f"machine: {m['device_count']} x {m['device_kind']} ({m['platform']}); "
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load average {m['load_before']:.2f} "
        f"before, {m['load_after']:.2f} after; jax {m['jax']}; torch on {m['torch_device']}, "
        f"{m['torch_threads']} threads; compute dtype {m['dtype']}; host memory "
        f"{'kept (glibc, both sides: jaxmm.host_memory)' if m['kept_host_memory'] else 'as is'}")
  for model in result["models"]:
    optimizer = "SGD momentum 0.9" if model["optimizer"] == "sgd" else "AdamW wd 0.01"
    print(f"{model['model']}: {model['sizes']}; {optimizer}, lr {model['learning_rate']}; "
          f"params jaxmm {model['params']['jaxmm']:,} torch {model['params']['torch']:,}")
    print(side_line("jaxmm", model["jaxmm"], model["unit"], jaxmm_settings(model, m)))
    print(side_line("torch", model["torch"], model["unit"], torch_settings(model, m)))
    print(ratio_line(model, args.repeats))
    line = mfu_line(model)
    if line and m["platform"] == "gpu":
      print(line)
    for warning in model["warnings"]:
      print(f"  WARNING: {warning}")
  if m["platform"] == "cpu" and args.xla_cpu_flags:
    print(f"jaxmm's convolutions train faster on CPU with XLA_FLAGS="
          f"'{' '.join(RECOMMENDED_XLA_CPU_FLAGS)}' (set here before JAX started; "
          f"--no-xla_cpu_flags leaves XLA_FLAGS as it was)")
