"""Tests of the cascading model-parameter randomisation check: layer groups of real jaxmm
parameter trees, the cascade itself, rank correlations against scipy, and one end-to-end run
with vanilla gradients on a tiny ResNet."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import traverse_util

from jaxmm.evaluation import sanity
from jaxmm.models.build import build_model
from jaxmm.saliency import methods, model_fns

RESNET_TINY = {"encoder": "resnet_tiny"}
TINY_BERT = {"num_layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32,
             "vocab_size": 50, "max_len": 16}
RESNET_TINY_IMAGE_GROUPS = ["image/layer4/0", "image/layer3/0", "image/layer2/0",
                            "image/layer1/0", "image/stem"]
HEAD_GROUPS = ["head/logits", "head/dense_1", "head/dense_0"]


def batch_for(modalities, size=8):
  batch = {"image": jnp.zeros((2, size, size, 3)), "meta": jnp.zeros((2, 5)),
           "text_ids": jnp.zeros((2, 6), jnp.int32), "text_mask": jnp.ones((2, 6), jnp.int32)}
  keys = {"image": ["image"], "meta": ["meta"], "text": ["text_ids", "text_mask"]}
  return {k: batch[k] for m in modalities for k in keys[m]}


def param_shapes(config):
  """The params of build_model(config) as ShapeDtypeStructs (eval_shape: sorted dict keys)."""
  model = build_model({"num_classes": 3, **config})
  batch = batch_for(config["modalities"])
  return jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))["params"]


def coverage_counts(params, groups):
  """How many groups' prefixes each leaf lies under."""
  return [sum(path[:len(p)] == p for _, prefixes in groups for p in prefixes)
          for path in traverse_util.flatten_dict(params)]


@pytest.mark.parametrize("config,expected", [
    ({"modalities": ("image",), "image": RESNET_TINY}, HEAD_GROUPS + RESNET_TINY_IMAGE_GROUPS),
    ({"modalities": ("image", "meta"), "image": RESNET_TINY},
     HEAD_GROUPS + ["meta/dense_1", "meta/dense_0"] + RESNET_TINY_IMAGE_GROUPS),
    ({"modalities": ("image",), "image": {"encoder": "small_cnn"}},
     HEAD_GROUPS + [f"image/conv{i}" for i in range(6, 0, -1)]),
    ({"modalities": ("meta", "text", "image"), "fusion": "film", "image": RESNET_TINY,
      "text": TINY_BERT},
     HEAD_GROUPS + ["film/dense", "meta/dense_1", "meta/dense_0", "text/pooler",
                    "text/encoder/layer/1", "text/encoder/layer/0", "text/embeddings"]
     + RESNET_TINY_IMAGE_GROUPS),
    ({"modalities": ("image", "meta"), "fusion": "late", "image": RESNET_TINY},
     ["late/meta_head", "late/image_head", "meta/dense_1", "meta/dense_0"]
     + RESNET_TINY_IMAGE_GROUPS),
])
def test_layer_groups_are_top_down_and_cover_every_leaf_once(config, expected):
  params = param_shapes(config)
  groups = sanity.layer_groups(params)
  assert [name for name, _ in groups] == expected
  assert coverage_counts(params, groups) == [1] * len(traverse_util.flatten_dict(params))


def test_layer_groups_do_not_depend_on_dict_order():
  """model.init keeps creation order (conv1 before bn1); eval_shape / jit sort the keys."""
  model = build_model({"modalities": ("image",), "num_classes": 3, "image": RESNET_TINY})
  created = model.init(jax.random.key(0), batch_for(("image",)), train=False)["params"]
  assert list(created["image"])[:2] == ["conv1", "bn1"]
  shapes = param_shapes({"modalities": ("image",), "image": RESNET_TINY})
  assert list(shapes["image"])[:2] == ["bn1", "conv1"]
  assert sanity.layer_groups(created) == sanity.layer_groups(shapes)
  assert sanity.layer_groups(created)[-1] == (
      "image/stem", (("image", "conv1"), ("image", "bn1")))


def test_check_groups_rejects_missing_and_overlapping_groups():
  params = param_shapes({"modalities": ("image", "meta"), "image": RESNET_TINY})
  groups = sanity.layer_groups(params)
  with pytest.raises(ValueError, match="image/conv1/kernel"):
    sanity.check_groups(params, groups[:-1])
  with pytest.raises(ValueError, match="head/logits/bias"):
    sanity.check_groups(params, groups + [("again", (("head", "logits"),))])


def test_cascade_replaces_exactly_the_first_groups():
  shapes = param_shapes({"modalities": ("image", "meta"), "image": RESNET_TINY})
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  trained = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
  groups = sanity.layer_groups(shapes)
  steps = sanity.cascading_randomization(init, trained, groups)
  assert [name for name, _ in steps] == [name for name, _ in groups]
  for i, (_, params) in enumerate(steps):
    flat = traverse_util.flatten_dict(params)
    for j, (_, prefixes) in enumerate(groups):
      values = {float(v.mean()) for path, v in flat.items()
                if any(path[:len(p)] == p for p in prefixes)}
      assert values == ({0.0} if j <= i else {1.0}), (i, j)
  final = traverse_util.flatten_dict(steps[-1][1])
  assert all(np.all(v == 0) for v in final.values())
  assert jax.tree.structure(steps[-1][1]) == jax.tree.structure(trained)


def test_randomization_similarity_of_self_and_negative():
  maps = jax.random.normal(jax.random.key(0), (3, 5, 4))
  same = sanity.randomization_similarity(maps, maps)
  np.testing.assert_allclose(same["spearman"], 1.0)
  np.testing.assert_allclose(same["spearman_abs"], 1.0)
  negative = sanity.randomization_similarity(maps, -maps)
  np.testing.assert_allclose(negative["spearman"], -1.0)
  np.testing.assert_allclose(negative["spearman_abs"], 1.0)
  assert negative["spearman_mean"] == pytest.approx(-1.0)
  assert negative["spearman_abs_mean"] == pytest.approx(1.0)


def test_rank_correlation_matches_scipy_with_ties():
  a = np.round(np.asarray(jax.random.normal(jax.random.key(1), (4, 30))))  # many ties
  b = np.round(np.asarray(jax.random.normal(jax.random.key(2), (4, 30))) + a)
  expected = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a, b)]
  np.testing.assert_allclose(sanity.rank_correlation(a, b), expected, rtol=1e-12)
  assert np.isnan(sanity.rank_correlation(np.ones((1, 5)), b[:1, :5]))[0]


def test_cascading_randomization_test_with_vanilla_gradients():
  model = build_model({"modalities": ("image",), "num_classes": 3,
                       "image": {"encoder": "resnet_tiny", "zero_init_last_bn": False}})
  batch = {"image": jax.random.normal(jax.random.key(5), (2, 8, 8, 3))}
  variables = model.init(jax.random.key(0), batch, train=False)  # random init as "trained"
  targets = jnp.array([0, 2])
  fn = methods.compiled("vanilla_gradient",
                        lambda v: model_fns.linen_apply_fn(model, v, train=False), {},
                        methods.Context())
  gradient = lambda v, b, t: fn(v, b, t, jax.random.key(0))["raw"]
  rows = sanity.cascading_randomization_test(model, variables, batch, targets, gradient,
                                             jax.random.key(1), keep_maps=True)
  groups = sanity.layer_groups(variables["params"])
  assert [(r["layer"], r["step"]) for r in rows] == [(g[0], i) for i, g in enumerate(groups)]
  for row in rows:
    assert row["maps"].shape == (2, 8, 8)
    assert row["per_example"]["spearman"].shape == (2,)
    assert np.isfinite(row["spearman"]) and np.isfinite(row["spearman_abs"])
    assert -1 <= row["spearman"] < 0.9  # the gradient depends on the randomised weights
  # A map that ignores the model (an edge detector, say) fails the check: similarity stays 1.
  edges = lambda v, b, t: jnp.abs(jnp.diff(b["image"].sum(-1), axis=1, append=0.0))
  control = sanity.cascading_randomization_test(model, variables, batch, targets, edges,
                                                jax.random.key(1))
  np.testing.assert_allclose([r["spearman"] for r in control], 1.0)
  np.testing.assert_allclose([r["spearman_abs"] for r in control], 1.0)


def test_a_non_finite_map_gets_nan_similarity_a_warning_and_is_not_counted():
  # One NaN pixel (a failed attribution) makes an example's similarity NaN; the means must say
  # how many examples they average, and the examples must be named.
  rng = np.random.default_rng(0)
  reference = rng.normal(size=(4, 6, 6))
  randomized = reference.copy()
  randomized[1:] = rng.normal(size=(3, 6, 6))
  randomized[2, 0, 0], reference[3, 1, 1] = np.nan, np.inf
  with pytest.warns(RuntimeWarning, match=r"2 of 4 examples .* \(examples c, d\)"):
    sim = sanity.randomization_similarity(reference, randomized, names=np.array(list("abcd")))
  clean = sanity.randomization_similarity(reference[:2], randomized[:2])
  for key in ("spearman", "spearman_abs"):
    assert np.isnan(sim[key][2:]).all() and not np.isnan(sim[key][:2]).any(), key
    assert sim[f"{key}_mean"] == pytest.approx(clean[f"{key}_mean"])
  assert (sim["n"], sim["n_abs"]) == (2, 2)
  assert (clean["n"], clean["n_abs"]) == (2, 2)
