"""Joint multimodal IG on a fused image + text + metadata model: completeness across
modalities, token and field mapping, shares; and the registry entries on the same model."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm.models import build_model
from jaxmm.saliency import methods, model_fns, multimodal
from tests.models.test_fusion import make_batch, tiny_config

CLS, SEP, PAD = 2, 3, 0
FIELDS = (("age", slice(0, 1)), ("sex", slice(1, 3)), ("site", slice(3, 5)))


@pytest.fixture(scope="module")
def fused():
  model = build_model(tiny_config(("image", "text", "meta"), "concat"))
  batch = make_batch()
  batch["text_ids"][:, 0] = CLS
  batch["text_ids"][0, -1] = SEP
  batch["text_ids"][1, 4] = SEP
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  variables = model.init(jax.random.key(0), batch, train=False)
  variables = {k: v for k, v in variables.items() if k != "perturbations"}
  return model_fns.linen_apply_fn(model, variables, train=False), batch


def test_reference_tokens_keep_specials_and_padding():
  ids = jnp.array([[CLS, 7, 8, SEP, 0], [CLS, 9, SEP, 5, 5]])
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
  ref = multimodal.reference_token_ids(ids, mask, PAD, (CLS, SEP))
  np.testing.assert_array_equal(ref, [[CLS, PAD, PAD, SEP, 0], [CLS, PAD, SEP, 5, 5]])


def test_joint_ig_is_complete_over_modalities_and_maps_back_to_tokens_and_fields(fused):
  apply, batch = fused
  targets = jnp.array([0, 2])
  fn = jax.jit(functools.partial(
      multimodal.multimodal_integrated_gradients, apply, modalities=("image", "text", "meta"),
      pad_id=PAD, keep_ids=(CLS, SEP), meta_fields=FIELDS, steps=64, chunk_size=16))
  out = fn(batch, targets)
  assert out["image"].shape == batch["image"].shape
  assert out["text_tokens"].shape == batch["text_ids"].shape
  assert out["meta_fields"].shape == (2, 3)
  np.testing.assert_allclose(out["modality_totals"].sum(-1), out["attribution_sum"], rtol=1e-5)
  assert np.all(np.abs(out["gap"]) <= 0.01 * np.abs(out["score_difference"]) + 1e-4), out
  np.testing.assert_allclose(out["modality_shares"].sum(-1), 1.0, rtol=1e-6)
  # [CLS], [SEP] and padding embed identically in input and reference: zero attribution.
  tokens = np.asarray(out["text_tokens"])
  np.testing.assert_allclose(tokens[0, [0, -1]], 0, atol=1e-7)
  np.testing.assert_allclose(tokens[1, [0, 4, 5, 6, 7]], 0, atol=1e-7)
  assert np.all(np.abs(tokens[0, 1:-1]) > 1e-5)
  np.testing.assert_allclose(out["meta_fields"][:, 1], out["meta_columns"][:, 1:3].sum(-1),
                             rtol=1e-6)
  np.testing.assert_allclose(out["modality_totals"][:, 2], out["meta_columns"].sum(-1),
                             rtol=1e-5, atol=1e-6)


def test_input_function_replaces_the_text_embedding_and_rejects_unknown_layers(fused):
  apply, batch = fused
  f = model_fns.input_function(apply, batch, ["text/embedding_output"])
  actual = model_fns.inputs_of(apply, batch, ["text/embedding_output"])
  np.testing.assert_allclose(f(actual), apply(batch)[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(f({"text/embedding_output": actual["text/embedding_output"] * 0}),
                         apply(batch)[0])
  with pytest.raises(KeyError, match="valid layers"):
    model_fns.input_function(apply, batch, ["image/stage9"])


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_registered_method_runs_jitted_on_the_fused_model(fused, name):
  apply, batch = fused
  context = methods.Context(modalities=("image", "text", "meta"), layer="image/stage3",
                            meta_fields=FIELDS, pad_id=PAD, keep_ids=(CLS, SEP))
  small = {"steps": 4, "num_samples": 2, "chunk_size": 2}
  options = {k: v for k, v in small.items() if k in {
      "integrated_gradients": ("steps", "chunk_size"), "ig_smoothgrad": ("steps", "num_samples"),
      "smoothgrad": ("num_samples", "chunk_size"), "multimodal_ig": ("steps", "chunk_size"),
      "scorecam": ("chunk_size",)}.get(name, ())}
  fn = jax.jit(lambda b, t, k: methods.get_method(name)(apply, b, t, k, options, context))
  out = fn(batch, jnp.array([1, 0]), jax.random.key(0))
  assert out["raw"].shape == out["normalized"].shape == (2, 64, 64)
  assert np.all(np.isfinite(out["raw"])) and np.abs(out["normalized"]).max() <= 1 + 1e-6
  if name == "multimodal_ig":
    assert out["text_tokens"].shape == (2, 8) and out["meta_fields"].shape == (2, 3)
