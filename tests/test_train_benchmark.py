"""`python -m jaxmm.benchmark train` at tiny sizes: both sides train, the report and JSON hold
real numbers. Speed targets are measured by the benchmark, never asserted here."""
import json
import math
import os
import types

import pytest

from jaxmm import benchmark
from jaxmm import train_benchmark as tb

TINY = ["--image_size=32", "--batch=2", "--bert_layers=2", "--bert_hidden=64", "--seq_len=16",
        "--warmup=2", "--repeats=3", "--torch_compile=off", "--no-xla_cpu_flags"]


@pytest.fixture
def jax_env(monkeypatch):
  """benchmark.main sets XLA_FLAGS / XLA_PYTHON_CLIENT_PREALLOCATE: restore both afterwards."""
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE",
                     os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"))


def test_train_benchmark_tiny_models_train_and_report(tmp_path, capsys, jax_env):
  path = tmp_path / "train.json"
  assert benchmark.main(["train", "--models=resnet_tiny,bert", *TINY, f"--json={path}"]) == 0
  printed = capsys.readouterr().out
  result = json.loads(path.read_text())
  assert [m["model"] for m in result["models"]] == ["resnet_tiny", "bert"]
  assert result["machine"]["cpu_count"] == os.cpu_count()
  for model in result["models"]:
    # Same architecture on both sides: the parameter counts agree exactly.
    assert model["params"]["jaxmm"] == model["params"]["torch"] > 0
    for side in (model["jaxmm"], model["torch"]):
      losses = side["losses"]
      assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
      assert losses[-1] < losses[0]  # training on one fixed batch lowers its loss
      assert side["per_s"] > 0 and len(side["warmup_s"]) == 2
      assert side["per_s"] == pytest.approx(model["batch"] / side["step_s"])
    assert model["torch"]["mode"] == "eager" and list(model["torch"]["modes"]) == ["eager"]
    assert model["ratio"] == pytest.approx(model["jaxmm"]["per_s"] / model["torch"]["per_s"])
    assert model["jaxmm"]["setup_s"] > 0  # compilation reported apart from the steps
    assert f"ratio jaxmm / torch = {model['ratio']:.2f}x" in printed
  assert "2 layers, hidden 64, 1 heads, seq 16, batch 2" in printed
  # The FLOPs come from the trace that was compiled: equal to a fresh trace of the same step.
  args = benchmark.parse(["train", *TINY])
  spec = tb.model_spec("resnet_tiny", args)
  batch = tb.random_batch(spec, args.batch, args)
  _, state, train_fn = tb.jaxmm_setup(spec, batch, "float32")
  assert result["models"][0]["flops_per_step"] == tb.traced_flops(train_fn, state, batch) > 0
  for text in ("jaxmm", "torch", "images/s", "sequences/s", "eager used", "channels_last",
               "fused SGD", "fused AdamW", f"{result['machine']['torch_threads']} threads",
               "optimizer update in a cond on the finite flag"):
    assert text in printed


def test_defaults_differ_per_benchmark():
  saliency, train = benchmark.parse(["saliency"]), benchmark.parse(["train"])
  assert (saliency.batch, saliency.repeats) == (2, 3)
  assert (train.batch, train.repeats, train.models) == (0, 10, "resnet18,resnet50,bert")
  assert benchmark.parse(["train", "--batch=4"]).batch == 4


def test_unknown_model_names_the_valid_ones():
  with pytest.raises(ValueError, match="'vgg'.*resnet18.*resnet50.*bert"):
    tb.parse_models("resnet18,vgg")
  with pytest.raises(ValueError, match="nothing given"):
    tb.parse_models(" , ")
  assert tb.parse_models("bert, resnet18") == ("bert", "resnet18")


def test_peak_flops_by_device_kind():
  assert tb.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert tb.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert tb.peak_flops("NVIDIA H200", "float32") == 494e12
  assert tb.peak_flops("NVIDIA A100-SXM4-40GB", "bfloat16") == 312e12
  assert tb.peak_flops("Tesla T4", "bfloat16") is None


def test_side_record_model_flop_utilisation():
  m = tb.Measurement(setup_s=1.0, warmup_s=[2.0], step_s=0.5, losses=[1.0])
  record = tb.side_record(m, batch=8, flops=4e12, peak=16e12)
  assert record["per_s"] == 16.0
  assert record["model_tflops_per_s"] == pytest.approx(8.0)
  assert record["mfu"] == pytest.approx(0.5)
  assert "mfu" not in tb.side_record(m, batch=8, flops=4e12, peak=None)


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
