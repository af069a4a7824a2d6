"""`python -m jaxmm.benchmark train` at tiny sizes: both sides train, the report and JSON hold
real numbers. Speed targets are measured by the benchmark, never asserted here."""
import json
import math
import os
import re
import types

import pytest

from jaxmm import benchmark
from jaxmm import train_benchmark as tb

TINY = ["--image_size=32", "--batch=2", "--bert_layers=2", "--bert_hidden=64", "--seq_len=16",
        "--warmup=2", "--repeats=3", "--torch_compile=off", "--no-xla_cpu_flags"]


@pytest.fixture
def jax_env(monkeypatch):
  """benchmark.main sets XLA_FLAGS / XLA_PYTHON_CLIENT_PREALLOCATE: restore both afterwards.
  It also calls host_memory.keep_host_memory, whose glibc settings would stay for the rest of
  the test session: JAXMM_KEEP_HOST_MEMORY=0 leaves the allocator alone."""
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE",
                     os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"))
  monkeypatch.setenv("JAXMM_KEEP_HOST_MEMORY", "0")


def torch_step_flops(spec: tb.ModelSpec, batch: dict) -> float:
  """FLOPs of one torch training step on `batch`, by torch.utils.flop_counter (an independent
  count: PyTorch's formulas per aten op)."""
  from torch.utils.flop_counter import FlopCounterMode
  model = tb.torch_model(spec)
  inputs, labels = tb.torch_inputs(spec, batch, "cpu", channels_last=False)
  step = tb.torch_step_fn(model, tb.torch_optimizer(spec, model), inputs, labels, None)
  with FlopCounterMode(display=False) as counter:
    step()
  return counter.get_total_flops()


def test_train_benchmark_tiny_models_train_and_report(tmp_path, capsys, jax_env):
  path = tmp_path / "train.json"
  assert benchmark.main(["train", "--models=resnet_tiny,bert", *TINY, f"--json={path}"]) == 0
  printed = capsys.readouterr().out
  result = json.loads(path.read_text())
  assert [m["model"] for m in result["models"]] == ["resnet_tiny", "bert"]
  assert result["machine"]["cpu_count"] == os.cpu_count()
  assert result["machine"]["kept_host_memory"] is False and result["warnings"] == []
  for model in result["models"]:
    # Same architecture on both sides: the parameter counts agree exactly.
    assert model["params"]["jaxmm"] == model["params"]["torch"] > 0
    for side in (model["jaxmm"], model["torch"]):
      losses = side["losses"]
      assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
      assert side["finite_losses"] and losses[-1] < losses[0]  # one fixed batch: loss falls
      assert side["per_s"] > 0 and len(side["warmup_s"]) == 2
      assert side["per_s"] == pytest.approx(model["batch"] / side["step_s"])
    assert model["torch"]["mode"] == "eager" and list(model["torch"]["modes"]) == ["eager"]
    assert model["ratio"] == pytest.approx(model["jaxmm"]["per_s"] / model["torch"]["per_s"])
    assert model["jaxmm"]["setup_s"] > 0  # compilation reported apart from the steps
    # One device each: jaxmm no longer spreads over every device while torch uses one.
    assert model["jaxmm_devices"] == 1 and model["peer_comparison"] is True
    assert f"ratio jaxmm / torch = {model['ratio']:.2f}x" in printed
  assert [m["torch_channels_last"] for m in result["models"]] == [True, False]
  assert "2 layers, hidden 64, 1 heads, seq 16, batch 2" in printed
  # The FLOPs of the step that was compiled (jaxpr count) equal PyTorch's own count of its
  # step on the same batch (BERT: 4e-4 apart).
  args = benchmark.parse(["train", *TINY])
  for model in result["models"]:
    spec = tb.model_spec(model["model"], args)
    batch = tb.random_batch(spec, args.batch, args)
    assert model["flops_per_step"] == pytest.approx(torch_step_flops(spec, batch), rel=1e-3)
  for text in ("jaxmm", "torch", "images/s", "sequences/s", "channels_last", "fused SGD",
               "fused AdamW", f"{result['machine']['torch_threads']} threads",
               "optimizer update in a cond on the finite flag", "1 cpu device (of 1), as torch",
               "eager: --torch_compile=off, torch.compile not timed"):
    assert text in printed


def test_defaults_differ_per_benchmark():
  saliency, train = benchmark.parse(["saliency"]), benchmark.parse(["train"])
  assert (saliency.batch, saliency.repeats, saliency.warmup) == (2, 3, 1)
  assert (train.batch, train.repeats, train.warmup) == (None, 10, 2)
  assert train.models == ("resnet18", "resnet50", "bert") and train.devices == 1
  assert benchmark.parse(["train", "--batch=4"]).batch == 4
  assert benchmark.parse(["saliency", "--steps=8"]).path_chunk == 8
  assert benchmark.parse(["saliency", "--warmup=3", "--no-channels_last"]).warmup == 3


@pytest.mark.parametrize("argv, message", [
    (["train", "--repeats=0"], "--repeats: must be >= 1, got 0"),
    (["train", "--batch=-2"], "--batch: must be >= 1, got -2"),
    (["train", "--image_size=0"], "--image_size: must be >= 1, got 0"),
    (["train", "--models=resnet18,vgg"], r"unknown \['vgg'\]; valid models: \['resnet18'"),
    (["train", "--models= , "], "nothing given"),
    (["train", "--devices=0"], "--devices: must be >= 1"),
    (["train", "--batch=6", "--devices=4"], "--batch=6 is not divisible by --devices=4"),
    (["train", "--seq_len=513"], "BERT has 512 positions"),
    (["train", "--bert_hidden=96", "--bert_heads=5"], "not divisible by 5 heads"),
    (["train", "--samples=4"], r"--samples: `saliency` only"),
    (["saliency", "--dtype=bfloat16", "--torch_compile=off"],
     r"--dtype, --torch_compile: `train` only"),
    (["saliency", "--fast_batch_norm"], r"--fast_batch_norm: `train` only"),
    (["saliency", "--warmup=0"], "--warmup: must be >= 1"),  # the first call compiles
    (["train", "--warmup=0"], "--warmup: must be >= 1"),  # torch.compile's first step compiles
    (["saliency", "--steps=1"], "--steps: must be >= 2"),
    (["saliency", "--repeats=x"], "'x' is not an integer"),
])
def test_bad_flags_are_refused_before_anything_runs(argv, message, capsys):
  """Refused by the parser (exit 2), not after JAX and torch started or models compiled; a flag
  of the other benchmark is an error, not silently ignored."""
  with pytest.raises(SystemExit) as exit_info:
    benchmark.parse(argv)
  assert exit_info.value.code == 2
  assert re.search(message, capsys.readouterr().err)


def test_unknown_model_names_the_valid_ones():
  with pytest.raises(ValueError, match="'vgg'.*resnet18.*resnet50.*bert"):
    tb.parse_models("resnet18,vgg")
  with pytest.raises(ValueError, match="nothing given"):
    tb.parse_models(" , ")
  assert tb.parse_models("bert, resnet18") == ("bert", "resnet18")


def test_peak_flops_by_exact_gpu_model():
  assert tb.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert tb.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert tb.peak_flops("NVIDIA H200", "float32") == 494e12
  assert tb.peak_flops("NVIDIA A100-SXM4-40GB", "bfloat16") == 312e12
  assert tb.peak_flops("NVIDIA A100 80GB PCIe", "float32") == 156e12
  # Names that contain a listed one but are other GPUs: their own peak, or unknown.
  assert tb.peak_flops("NVIDIA H100 NVL", "bfloat16") == 835e12
  assert tb.peak_flops("NVIDIA H200 NVL", "float32") == 417e12
  for other in ("NVIDIA RTX A1000", "NVIDIA RTX A1000 Laptop GPU", "NVIDIA A10", "Tesla T4",
                "NVIDIA GH200 480GB", "NVIDIA H100 80GB HBM3 MIG 1g.10gb"):
    assert tb.peak_flops(other, "bfloat16") is None, other


def test_jaxmm_trains_on_one_device_unless_told():
  assert tb.first_devices(["d0", "d1", "d2"], 1) == ["d0"]
  assert tb.first_devices(["d0", "d1", "d2"], 2) == ["d0", "d1"]
  with pytest.raises(tb.FlagError, match="--devices=4: this host has 3"):
    tb.first_devices(["d0", "d1", "d2"], 4)
  assert tb.jaxmm_mesh().devices.size == 1


def model_record(devices: int, torch_compile: str, mode: str) -> dict:
  """A benchmark_model record with what the report's helpers read."""
  side = {"per_s": 10.0, "warmup_s": [2.0], "mfu": 0.25, "model_tflops_per_s": 1.0}
  modes = {m: side for m in tb.TORCH_MODES[torch_compile]}
  return {"jaxmm_devices": devices, "torch_compile": torch_compile, "unit": "images",
          "torch_channels_last": False, "dtype": "bfloat16", "optimizer": "sgd", "ratio": 2.0,
          "flops_per_step": 1e12, "peak_flops": 1e15, "jaxmm": {**side, "mfu": 0.125},
          "torch": {**side, "mode": mode, "modes": modes}}


def test_report_says_why_torch_ran_as_it_did_and_where_jaxmm_ran():
  machine = {"platform": "gpu", "device_count": 8, "torch_settings": ["torch 2.x"]}
  off = tb.torch_settings(model_record(1, "off", "eager"), machine)
  assert off.startswith("eager: --torch_compile=off, torch.compile not timed (eager 10.00/s")
  assert "contiguous NCHW (--no-channels_last)" in off and "autocast bfloat16" in off
  assert tb.torch_settings(model_record(1, "on", "compile"), machine).startswith(
      "torch.compile: --torch_compile=on, eager not timed")
  assert tb.torch_settings(model_record(1, "auto", "compile"), machine).startswith(
      "torch.compile used: the faster with --torch_compile=auto (eager 10.00/s, first step "
      "2.0 s; compile 10.00/s")
  one, two = model_record(1, "auto", "eager"), model_record(2, "auto", "eager")
  assert tb.devices_text(one, machine) == "1 gpu device (of 8), as torch"
  assert "jaxmm only, torch uses 1; not a peer comparison" in tb.devices_text(two, machine)
  assert "NOT a peer comparison" in tb.ratio_line(two, 10)
  assert "NOT" not in tb.ratio_line(one, 10)
  assert "MFU jaxmm 12.5% (of 2 x peak), torch 25.0%" in tb.mfu_line(two)


def test_torch_side_follows_channels_last(monkeypatch):
  """--no-channels_last was ignored: the ResNets were always channels_last."""
  import torch
  made = []
  build = tb.torch_model
  monkeypatch.setattr(tb, "torch_model", lambda spec: made.append(build(spec)) or made[-1])
  args = benchmark.parse(["train", "--image_size=8"])
  spec = tb.model_spec("resnet_tiny", args)
  batch = tb.random_batch(spec, 2, args)
  for channels_last in (True, False):
    tb.torch_stepper(spec, batch, "cpu", "float32", False, channels_last)
  kernels = [m.resnet.embedder.embedder.convolution.weight for m in made]
  assert [k.is_contiguous(memory_format=torch.channels_last) for k in kernels] == [True, False]


def test_side_record_model_flop_utilisation():
  m = tb.Measurement(setup_s=1.0, warmup_s=[2.0], step_s=0.5, losses=[1.0])
  record = tb.side_record(m, batch=8, flops=4e12, peak=16e12)
  assert record["per_s"] == 16.0
  assert record["model_tflops_per_s"] == pytest.approx(8.0)
  assert record["mfu"] == pytest.approx(0.5)
  assert "mfu" not in tb.side_record(m, batch=8, flops=4e12, peak=None)
  assert record["finite_losses"]
  nan = m._replace(losses=[1.0, float("nan")])
  assert not tb.side_record(nan, batch=8, flops=None, peak=None)["finite_losses"]


def test_measure_interleaved_alternates_sides_after_warmup():
  calls = []

  def stepper(name):
    return tb.Stepper(lambda: calls.append(name) or len(calls), lambda n: float(-n))

  measured = tb.measure_interleaved({"a": stepper("a"), "b": stepper("b")}, warmup=1,
                                    repeats=3)
  assert calls == ["a", "b", "a", "b", "a", "b", "a", "b"]
  assert measured["a"].losses == [-1.0, -3.0, -5.0, -7.0]
  assert len(measured["b"].warmup_s) == 1 and measured["b"].step_s >= 0


def test_configure_jax_env_keeps_flags_the_user_set(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_b=false --xla_c=1")
  monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
  flags = ("--xla_a=true", "--xla_b=true")
  assert tb.configure_jax_env(flags) == "--xla_b=false --xla_c=1 --xla_a=true"
  assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  monkeypatch.setenv("XLA_FLAGS", "--xla_c=1")
  assert tb.configure_jax_env(()) == "--xla_c=1"


def test_bert_spec_sizes_follow_the_flags():
  args = types.SimpleNamespace(bert_layers=3, bert_hidden=128, bert_heads=0, seq_len=16)
  spec = tb.model_spec("bert", args)
  assert spec.jaxmm_encoder["num_heads"] == 2 and spec.hf_layout["num_attention_heads"] == 2
  assert spec.hf_layout["intermediate_size"] == spec.jaxmm_encoder["intermediate_size"] == 512
  assert spec.optimizer == "adamw" and tb.model_spec("resnet50", args).optimizer == "sgd"


def test_traced_flops_count_products_and_convolutions_by_hand():
  """2 FLOPs per multiply-add: dense forward + weight gradient, a batched matmul, a conv, the
  input gradient of a strided conv without the zeros its input dilation inserts, a scan's
  body x its length and the costlier branch of a cond."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  x, w = jnp.ones((8, 32)), jnp.ones((32, 16))
  assert tb.traced_flops(jax.grad(lambda w: jnp.sum(x @ w)), w) == 2 * (2 * 8 * 32 * 16)
  a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))
  assert tb.traced_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b) == 2 * 3 * 4 * 5 * 6
  image, kernel = jnp.ones((2, 10, 10, 4)), jnp.ones((3, 3, 4, 6))
  conv = lambda s: lambda image: lax.conv_general_dilated(
      image, kernel, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert tb.traced_flops(conv(1), image) == 2 * (2 * 10 * 10 * 6) * (3 * 3 * 4)
  strided = 2 * (2 * 5 * 5 * 6) * (3 * 3 * 4)  # 5x5 outputs
  input_grad = jax.grad(lambda image: jnp.sum(conv(2)(image)))
  assert tb.traced_flops(input_grad, image) == 2 * strided  # forward + input gradient
  # jaxmm's conv primitives (the strided-conv family; oneDNN's are the same ConvOps) count as
  # the lax conv they compute: forward + input gradient + kernel gradient.
  from jaxmm.models import fast_backward
  ours = lambda image, kernel: jnp.sum(fast_backward.strided_conv(image, kernel, 2, ((1, 1),) * 2))
  assert tb.traced_flops(jax.grad(ours, (0, 1)), image, kernel) == 3 * strided
  m = jnp.ones((32, 32))
  scan = lambda m: lax.scan(lambda c, _: (c @ m, None), jnp.ones((4, 32)), length=5)[0]
  assert tb.traced_flops(scan, m) == 5 * 2 * 4 * 32 * 32
  cond = lambda p, m: lax.cond(p, lambda: m @ m @ m, lambda: m @ m)
  assert tb.traced_flops(cond, True, m) == 2 * 2 * 32 ** 3


# ---------------------------------------------------------------- saliency, pure parts

def test_saliency_timing_honours_warmup_and_keeps_the_last_outputs():
  """--warmup was ignored (always one untimed call); the last outputs serve the parity and
  finiteness checks, outside the timing."""
  calls = []

  def side(name):
    return lambda: calls.append(name) or len(calls)

  times, last = benchmark.interleaved({"jaxmm": side("j"), "captum": side("c")}, warmup=2,
                                      repeats=3)
  assert calls == ["j", "j", "c", "c"] + ["j", "c"] * 3
  assert last == {"jaxmm": 9, "captum": 10}
  assert set(times) == {"jaxmm", "captum"} and all(t >= 0 for pair in times.values() for t in pair)


def test_saliency_peer_gets_the_same_noise_scale_and_integration_rule():
  """captum's NoiseTunnel took stdevs=0.15 absolute while jaxmm drew 0.15 x each example's
  range (8.4 here: 8x more noise), and captum's trapezoid weights sum to (n - 1) / n."""
  import numpy as np
  from captum.attr._utils.approximation_methods import approximation_parameters
  from jaxmm.saliency import gradients, smoothgrad
  images = benchmark.unit_range_images(3, 8)
  flat = images.reshape(3, -1)
  assert (flat.min(1) == 0).all() and (flat.max(1) == 1).all()
  assert benchmark.captum_stdev(images, 0.15) == pytest.approx(0.15)
  assert np.asarray(smoothgrad.example_range(images)).ravel().tolist() == [1.0] * 3
  with pytest.raises(ValueError, match="ranges differ"):
    benchmark.captum_stdev(images * np.array([1, 2, 1], np.float32)[:, None, None, None], 0.15)
  n = 5
  alphas, weights = gradients.path_alphas(n, benchmark.IG_RULE)
  step_sizes, captum_alphas = approximation_parameters(benchmark.IG_RULE)
  np.testing.assert_allclose(alphas, captum_alphas(n), rtol=1e-6)
  np.testing.assert_allclose(weights, step_sizes(n), rtol=1e-6)
  trapezoid_sizes, _ = approximation_parameters("riemann_trapezoid")
  assert sum(trapezoid_sizes(n)) == pytest.approx((n - 1) / n)  # why not the trapezoid
  parity = benchmark.map_parity(np.array([[1.0, 2.0]]), np.array([[1.0, 2.5]]))
  assert parity == {"max_abs_diff": 0.5, "relative": 0.2}


def test_saliency_settings_say_what_each_side_runs_and_why():
  args = benchmark.parse(["saliency", "--steps=4", "--batch=3"])
  machine = {"torch_threads": 2, "convolutions": "XLA convolutions", "xla_flags": "",
             "kept_host_memory": False}
  settings = benchmark.saliency_settings(args, machine, "cuda", 0.15)
  for text in ("stdevs 0.15 (absolute: 0.15 x the range 1 of every example)",
               "internal_batch_size = 12", "method riemann_right", "cudnn.benchmark",
               "no torch.compile", "no autocast", "train-only flags"):
    assert text in settings["captum"], text
  assert "noise_level 0.15 x each example's range, method riemann_right" in settings["jaxmm"]


def test_saliency_warns_of_non_finite_maps():
  import numpy as np
  import torch
  ig = {"jaxmm": np.ones((2, 4, 4, 3), np.float32), "captum": torch.full((2, 3, 4, 4), np.nan)}
  cam = {"jaxmm": np.ones((2, 4, 4), np.float32), "captum": torch.ones(2, 1, 4, 4)}
  checks = benchmark.map_checks(ig, cam, lambda: {"max_abs_diff": 0.0})
  assert checks["finite_maps"] == {"ig_smoothgrad": False, "gradcam": True}
  assert checks["warnings"] == ["non-finite ig_smoothgrad maps in the timed calls: their speed "
                                "may not be representative"]
  assert checks["map_parity"]["gradcam"] == {"max_abs_diff": 0.0, "relative": 0.0}


def test_jaxmm_model_has_no_dropout_before_its_classifier_like_the_torch_peer():
  # A linear head applies head.dropout to its input (paper 001's image model); the torch
  # ResNet peers have no dropout there, so the benchmarked jaxmm model must not either.
  import jax
  import jax.numpy as jnp
  import ml_collections
  from jaxmm.models.build import build_model
  spec = tb.model_spec("resnet_tiny", types.SimpleNamespace())
  model = build_model(ml_collections.ConfigDict(tb.jaxmm_model_config(spec, "float32")))
  batch = {"image": jax.random.normal(jax.random.key(3), (2, 16, 16, 3))}
  variables = model.init(jax.random.key(0), batch, train=False)
  logits = [model.apply(variables, batch, train=True, rngs={"dropout": jax.random.key(k)},
                        mutable=["batch_stats"])[0][0] for k in (1, 2)]
  assert jnp.array_equal(*logits)
