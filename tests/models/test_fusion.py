"""MultimodalModel through build_model: every fusion x modality set, perturbation gradients,
late-fusion probability averaging, FiLM identity at init, bfloat16 compute, training mode."""
import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from jaxmm.models import FUSIONS, MODALITIES, MetaMLP, MultimodalModel, build_model
from jaxmm.models.fusion import BATCH_KEYS, FusionMLP, class_probabilities, probabilities_to_logits

KEY = jax.random.key(0, impl="rbg")  # rbg: threefry's kernels dominate CPU compile time
N, L, D, K = 2, 8, 5, 3
DIMS = {"image": 64, "text": 32, "meta": 8}  # ResNetTiny pre_logits, BERT hidden, meta width
ALL = ("image", "text", "meta")
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(ALL, r)]
ENCODER_KEYS = {
    "image": {"stem", "stage1", "stage2", "stage3", "stage4", "pre_logits"},
    "text": {"embedding_output", "last_hidden_state", "cls", "pooled"},
    "meta": {"embedding"},
}


def tiny_config(modalities, fusion, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      "modalities": tuple(modalities), "fusion": fusion, "num_classes": K,
      "multilabel": False, "dtype": "float32",
      "image": {"encoder": "resnet_tiny", "in_channels": 3},
      "text": {"encoder": "bert", "size": "tiny", "vocab_size": 50, "max_len": 16,
               "num_layers": 1, "hidden_size": DIMS["text"], "intermediate_size": 64},
      "meta": {"encoder": "mlp", "hidden": (16, DIMS["meta"])},
      "head": {"hidden": (16,), "dropout": 0.3, "joint_hidden": 12, "late_weights": None},
  })
  config.update(overrides)
  return config


def make_batch(modalities=ALL, seed=0) -> dict:
  """Only the keys the modalities need, as the data pipeline's batch."""
  rng = np.random.RandomState(seed)
  mask = np.ones((N, L), np.int32)
  mask[1, 5:] = 0
  batch = {"image": rng.normal(size=(N, 64, 64, 3)).astype(np.float32),
           "text_ids": rng.randint(1, 50, (N, L)).astype(np.int32), "text_mask": mask,
           "meta": rng.normal(size=(N, D)).astype(np.float32)}
  return {k: v for k, v in batch.items() if any(k in BATCH_KEYS[m] for m in modalities)}


def expected_keys(modalities, fusion) -> set[str]:
  keys = {f"{m}/{k}" for m in modalities for k in ENCODER_KEYS[m]} | {"fused"}
  if fusion == "late":
    keys |= {f"late/{m}_logits" for m in modalities}
  if fusion == "film":
    keys.add("film/modulated")
  return keys


def expected_fused_width(modalities, fusion) -> int:
  return K if fusion == "late" else sum(DIMS[m] for m in modalities)


@functools.cache
def base_variables() -> dict:
  """One real (compiled) init of the concat model over all modalities."""
  model = build_model(tiny_config(ALL, "concat"))
  return jax.jit(functools.partial(model.init, train=False))(KEY, make_batch())


@functools.cache
def initialised(modalities, fusion):
  """A float32 model and its variables, shared by tests. Encoder parameters come from
  `base_variables`; the fusion's own ones are initialised lazily (an apply with mutable
  collections and a "params" rng creates the variables that are missing), which saves a
  compilation of every encoder's initialisers per fusion."""
  model = build_model(tiny_config(modalities, fusion))
  base = base_variables()
  if (modalities, fusion) == (ALL, "concat"):
    return model, base
  given = {c: {m: base[c][m] for m in modalities if m in base[c]}
           for c in ("params", "batch_stats")}
  _, variables = model.apply(given, make_batch(modalities), train=False, rngs={"params": KEY},
                             mutable=True)
  return model, variables


def apply(model, variables, batch):
  """Eager apply: encoders have the same shapes in every test, so their ops compile once."""
  return model.apply(variables, batch, train=False)


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
def test_every_fusion_and_modality_combination(modalities, fusion):
  config = tiny_config(modalities, fusion)
  if fusion == "film" and not {"image", "meta"} <= set(modalities):
    with pytest.raises(ValueError, match=r"fusion 'film' requires modalities \['image', 'meta'\]"):
      build_model(config)
    return
  model = build_model(config)
  (logits, out), variables = jax.eval_shape(
      functools.partial(model.init_with_output, train=False), KEY, make_batch(modalities))
  assert logits.shape == (N, K) and logits.dtype == jnp.float32
  assert set(out) == expected_keys(modalities, fusion)
  perturbation_keys = {"/".join(p) for p in traverse_util.flatten_dict(variables["perturbations"])}
  assert perturbation_keys == set(out)
  assert out["fused"].shape == (N, expected_fused_width(modalities, fusion))
  assert set(modalities) <= set(variables["params"])


def test_perturbation_gradients_equal_gradients_through_a_manual_split():
  model, variables = initialised(ALL, "concat")
  batch = make_batch()
  labels = jnp.array([0, 2])
  score = lambda logits: logits[jnp.arange(N), labels].sum()

  def score_of_perturbations(perturbations):
    logits, out = model.apply({**variables, "perturbations": perturbations}, batch, train=False)
    return score(logits), out

  grads, out = jax.jit(jax.grad(score_of_perturbations, has_aux=True))(
      variables["perturbations"])

  def score_of_head(stage4, cls, embedding):
    fused = jnp.concatenate([stage4.mean(axis=(1, 2)), cls, embedding], axis=-1)
    head = FusionMLP(K, (16,), 0.3)
    return score(head.apply({"params": variables["params"]["head"]}, fused, train=False))

  manual = jax.grad(score_of_head, argnums=(0, 1, 2))(
      out["image/stage4"], out["text/cls"], out["meta/embedding"])
  for key, expected in zip(("image/stage4", "text/cls", "meta/embedding"), manual):
    modality, name = key.split("/")
    got = grads[modality][name]
    assert np.abs(expected).max() > 0, key
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("weights", [None, (0.5, 1.5, 2.0)])
def test_late_fusion_logits_reproduce_mean_probabilities(weights, multilabel):
  _, variables = initialised(ALL, "late")  # weights and multilabel add no parameters
  order = ("text", "image", "meta")  # config order differs from the canonical one
  config = tiny_config(order, "late", multilabel=multilabel)
  config.head.late_weights = weights
  logits, out = apply(build_model(config), variables, make_batch())
  w = dict(zip(order, weights or (1.0, 1.0, 1.0)))
  total = sum(w.values())
  mean = sum(w[m] / total * class_probabilities(out[f"late/{m}_logits"], multilabel)
             for m in order)
  np.testing.assert_allclose(out["fused"], mean, rtol=1e-6, atol=1e-7)
  probs = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)
  np.testing.assert_allclose(probs, mean, rtol=1e-5, atol=1e-7)


def test_late_logits_clip_probabilities_0_and_1():
  probs = jnp.array([[0.0, 1.0]])
  clipped = np.array([[1e-7, 1 - 1e-7]], np.float32)
  np.testing.assert_allclose(probabilities_to_logits(probs, multilabel=False), np.log(clipped),
                             rtol=1e-6)
  np.testing.assert_allclose(probabilities_to_logits(probs, multilabel=True),
                             np.log(clipped) - np.log1p(-clipped), rtol=1e-6)


def identity_late_model(num_classes, multilabel=False, weights=None) -> MultimodalModel:
  """Late fusion of two identity encoders (MetaMLP without layers): heads on raw features."""
  return MultimodalModel(num_classes, fusion="late", image=MetaMLP(hidden=()),
                         meta=MetaMLP(hidden=()), late_weights=weights, multilabel=multilabel)


def identity_batch(seed=0) -> dict:
  """Features [N, D] for both identity encoders of `identity_late_model`."""
  rng = np.random.RandomState(seed)
  return {m: rng.normal(size=(N, D)).astype(np.float32) for m in ("image", "meta")}


def late_heads(model, biases, kernel_scale=0.0, seed=0) -> dict:
  """Variables of `identity_late_model` with head m's bias set to biases[m] (kernels scaled)."""
  variables = model.init(KEY, identity_batch(), train=False)
  rng = np.random.RandomState(seed)
  heads = {f"{m}_head": {"kernel": kernel_scale * rng.normal(size=(D, len(b))).astype(np.float32),
                         "bias": np.asarray(b, np.float32)} for m, b in biases.items()}
  return {**variables, "params": {"late": heads}}


@pytest.mark.parametrize("weights", [None, (1.0, 0.0)])
def test_late_fusion_loss_and_gradient_stay_exact_when_every_head_is_confidently_wrong(weights):
  # Both heads put logit 20 on class 1 against label 0: the mean probability of class 0 is
  # ~2e-9. log of it clipped to 1e-7 capped the loss at 16.1 with a zero gradient. With weights
  # (1, 0) the meta head (confidently right) is left out.
  model = identity_late_model(3, weights=weights)
  variables = late_heads(model, {"image": [0, 20, 0], "meta": [0, 20, 0] if weights is None
                                 else [30, 0, 0]})
  batch = identity_batch()

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, batch, train=False)
    return -jax.nn.log_softmax(logits)[:, 0].mean()

  value, grads = jax.value_and_grad(loss)(variables["params"])
  assert float(value) == pytest.approx(20.0, rel=1e-6)
  share = 0.5 if weights is None else 1.0
  np.testing.assert_allclose(grads["late"]["image_head"]["bias"], [-share, share, 0], atol=1e-6)
  meta_grad = grads["late"]["meta_head"]["bias"]
  np.testing.assert_allclose(meta_grad, [-0.5, 0.5, 0] if weights is None else 0, atol=1e-6)


def test_multilabel_late_fusion_loss_is_exact_for_confident_heads():
  # Logit 25 against target 0: 1 - p = 1.4e-11 was clipped to 1e-7 (loss 15.9, zero gradient).
  model = identity_late_model(1, multilabel=True)
  variables = late_heads(model, {"image": [25.0], "meta": [25.0]})
  batch = identity_batch()

  def loss(params):  # BCE against target 0
    logits, _ = model.apply({**variables, "params": params}, batch, train=False)
    return jax.nn.softplus(logits).mean()

  value, grads = jax.value_and_grad(loss)(variables["params"])
  assert float(value) == pytest.approx(25.0, rel=1e-6)
  for head in ("image_head", "meta_head"):
    np.testing.assert_allclose(grads["late"][head]["bias"], [0.5], rtol=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("weights", [None, (0.5, 1.5)])
def test_late_logits_equal_log_of_clipped_mean_where_the_clip_is_inactive(weights, multilabel):
  model = identity_late_model(K, multilabel, weights)
  rng = np.random.RandomState(1)
  variables = late_heads(model, {m: rng.normal(size=K) for m in ("image", "meta")},
                         kernel_scale=1.0)
  batch = identity_batch()
  logits, out = model.apply(variables, batch, train=False)
  assert 1e-4 < np.asarray(out["fused"]).min() and np.asarray(out["fused"]).max() < 1 - 1e-4
  np.testing.assert_allclose(logits, probabilities_to_logits(out["fused"], multilabel),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_late_fusion_gradients_through_fused_and_head_logits(multilabel):
  # "fused" is a perturbation point: d logits / d fused is d log(p) or d logit(p); the heads'
  # logits get the log-space gradient once (the "fused" term's share cancels).
  model = identity_late_model(K, multilabel)
  variables = late_heads(model, {"image": [1.0, -2.0, 0.5], "meta": [0.0, 3.0, -1.0]})
  batch = identity_batch()
  score = lambda logits: logits[:, 1].sum()

  def of_perturbations(perturbations):
    return score(model.apply({**variables, "perturbations": perturbations}, batch,
                             train=False)[0])

  grads = jax.grad(of_perturbations)(variables["perturbations"])
  _, out = model.apply(variables, batch, train=False)
  p = np.asarray(out["fused"], np.float64)[:, 1]
  expected = 1 / (p * (1 - p)) if multilabel else 1 / p
  np.testing.assert_allclose(grads["fused"][:, 1], expected, rtol=1e-5)
  assert not np.any(np.delete(np.asarray(grads["fused"]), 1, axis=1))
  heads = {m: out[f"late/{m}_logits"] for m in ("image", "meta")}
  exact = jax.grad(lambda h: score(probabilities_to_logits(
      sum(0.5 * class_probabilities(x, multilabel) for x in h.values()), multilabel)))(heads)
  for m in heads:
    np.testing.assert_allclose(grads["late"][f"{m}_logits"], exact[m], rtol=1e-5, atol=1e-7)


def test_film_is_identity_at_init_and_modulates_once_trained():
  model, variables = initialised(("image", "meta"), "film")
  batch = make_batch(("image", "meta"))
  _, out = apply(model, variables, batch)
  np.testing.assert_array_equal(out["film/modulated"], out["image/stage4"])
  np.testing.assert_allclose(
      out["fused"], jnp.concatenate([out["image/pre_logits"], out["meta/embedding"]], -1),
      rtol=1e-6)

  rng = np.random.RandomState(1)
  film = {"kernel": rng.normal(size=(DIMS["meta"], 128)).astype(np.float32),
          "bias": rng.normal(size=(128,)).astype(np.float32)}
  params = {**variables["params"], "film": {"dense": film}}
  _, out = apply(model, {**variables, "params": params}, batch)
  gamma, beta = np.split(out["meta/embedding"] @ film["kernel"] + film["bias"], 2, axis=-1)
  expected = (1 + gamma[:, None, None]) * out["image/stage4"] + beta[:, None, None]
  np.testing.assert_allclose(out["film/modulated"], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["fused"][:, :DIMS["image"]], expected.mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model16 = build_model(tiny_config(ALL, "concat", dtype="bfloat16"))
  shapes = jax.eval_shape(functools.partial(model16.init, train=False), KEY, make_batch())
  for collection in ("params", "batch_stats"):
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes[collection])} == {jnp.dtype("float32")}
  model32, variables = initialised(ALL, "concat")
  # float32 perturbations would promote the intermediates they are added to.
  variables = {c: variables[c] for c in ("params", "batch_stats")}
  logits16, out16 = jax.jit(functools.partial(model16.apply, train=False))(variables, make_batch())
  logits32, _ = apply(model32, variables, make_batch())
  assert logits16.dtype == jnp.float32
  assert out16["image/stage4"].dtype == out16["text/cls"].dtype == jnp.bfloat16
  scale = max(1.0, float(np.abs(logits32).max()))
  np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)


def test_training_mode_uses_dropout_and_batch_statistics():
  model, variables = initialised(ALL, "concat")
  batch = make_batch()
  train = lambda key: model.apply(variables, batch, train=True, rngs={"dropout": key},
                                  mutable=["batch_stats"])
  (logits_a, _), state = train(jax.random.key(1))
  (logits_b, _), _ = train(jax.random.key(2))
  assert np.all(np.isfinite(logits_a)) and not np.allclose(logits_a, logits_b)
  old, new = variables["batch_stats"]["image"]["bn1"], state["batch_stats"]["image"]["bn1"]
  assert not np.allclose(old["mean"], new["mean"])


def test_linear_head_drops_its_input_features_in_training_only():
  # hidden=() with dropout > 0 is a linear classifier with dropout on its input (paper 001's
  # image-only model); before, that dropout was never applied. Identity kernel, zero bias: the
  # logits are the dropped features, each 0 or x / (1 - p).
  x = jnp.asarray(np.random.RandomState(0).uniform(1.0, 2.0, (64, 8)), jnp.float32)
  params = {"logits": {"kernel": jnp.eye(8), "bias": jnp.zeros(8)}}
  head = FusionMLP(8, (), 0.5)
  train = lambda key: head.apply({"params": params}, x, train=True, rngs={"dropout": key})
  a, b = np.asarray(train(jax.random.key(1))), np.asarray(train(jax.random.key(2)))
  assert not np.allclose(a, b)
  kept = a != 0
  np.testing.assert_allclose(a[kept], 2 * np.asarray(x)[kept], rtol=1e-6)
  assert 0.3 < kept.mean() < 0.7
  np.testing.assert_array_equal(head.apply({"params": params}, x, train=False), x)
  # dropout 0: no dropout layer, training mode is the plain Dense
  np.testing.assert_array_equal(FusionMLP(8, (), 0.0).apply(
      {"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)}), x)


def test_hidden_layer_head_keeps_its_input_and_drops_after_each_hidden_layer():
  # Paper 000's FusionMLP: the input is not dropped, only each hidden layer's output. Ones in,
  # ones kernels: every hidden unit is 6 (input dropout would make it 2 x the inputs kept), so
  # each logit is 12 x the hidden units kept by the one dropout after the hidden layer.
  x = jnp.ones((64, 6))
  params = {"dense_0": {"kernel": jnp.ones((6, 5)), "bias": jnp.zeros(5)},
            "logits": {"kernel": jnp.ones((5, 1)), "bias": jnp.zeros(1)}}
  head = FusionMLP(1, (5,), 0.5)
  out = np.asarray(head.apply({"params": params}, x, train=True,
                              rngs={"dropout": jax.random.key(3)}))
  np.testing.assert_array_equal(out % 12, 0)
  assert len(np.unique(out)) > 1
  np.testing.assert_array_equal(head.apply({"params": params}, x, train=False), 30.0)


def test_missing_batch_key_names_modality_and_keys():
  model = build_model(tiny_config(("image", "text"), "concat"))
  with pytest.raises(KeyError, match=r"modality 'text' needs batch keys \['text_mask'\]"):
    jax.eval_shape(functools.partial(model.init, train=False), KEY,
                   {k: v for k, v in make_batch().items() if k != "text_mask"})


def test_modalities_are_canonical_order_whatever_the_config_order():
  model = build_model(tiny_config(("meta", "image"), "concat"))
  assert model.modalities == ("image", "meta") and MODALITIES == ALL


@pytest.mark.parametrize("fusion,width", [("concat", 2048 + DIMS["meta"]),
                                          ("film", 128 + DIMS["meta"])])
def test_small_cnn_features_are_flattened_and_film_pools_its_last_stage(fusion, width):
  config = tiny_config(("image", "meta"), fusion, image={"encoder": "small_cnn"})
  model = build_model(config)
  batch = make_batch(("image", "meta"))
  batch["image"] = batch["image"][:, :32, :32]
  (logits, out), _ = jax.eval_shape(functools.partial(model.init_with_output, train=False), KEY,
                                    batch)
  assert logits.shape == (N, K) and out["fused"].shape == (N, width)
  assert out["image/stage3"].shape == (N, 4, 4, 128)
  if fusion == "film":
    assert out["film/modulated"].shape == (N, 4, 4, 128)


def test_film_without_zero_init_starts_from_a_random_modulation():
  # What the cascading randomisation test needs (evaluation.runner.randomizable): a fresh FiLM
  # layer that modulates, not the identity.
  model, variables = initialised(("image", "meta"), "film")
  assert model.film_zero_init and not np.any(variables["params"]["film"]["dense"]["kernel"])
  random_model = model.clone(film_zero_init=False)
  given = {c: {m: v for m, v in variables[c].items() if m != "film"}
           for c in ("params", "batch_stats")}
  batch = make_batch(("image", "meta"))
  _, fresh = random_model.apply(given, batch, train=False, rngs={"params": KEY}, mutable=True)
  kernel = np.asarray(fresh["params"]["film"]["dense"]["kernel"])
  assert kernel.shape == (DIMS["meta"], 128)
  assert kernel.std() == pytest.approx(DIMS["meta"] ** -0.5, rel=0.15)  # LeCun normal
  _, out = apply(random_model, fresh, batch)
  assert np.abs(np.asarray(out["film/modulated"] - out["image/stage4"])).max() > 0.1
