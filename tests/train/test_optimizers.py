"""Schedules, clipping and freezing of named sub-trees."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxmm.train import optimizers


def cfg(**kw):
  base = {"name": "adam", "learning_rate": 1.0, "weight_decay": 0.0, "schedule": "cosine",
          "grad_clip_norm": None, "freeze": ()}
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_warmup_then_cosine():
  sched = optimizers.make_schedule(cfg(learning_rate=0.1), total_steps=110, warmup_steps=10)
  np.testing.assert_allclose(sched(0), 0.0, atol=1e-8)
  np.testing.assert_allclose(sched(5), 0.05, rtol=1e-5)
  np.testing.assert_allclose(sched(10), 0.1, rtol=1e-5)
  np.testing.assert_allclose(sched(60), 0.05, rtol=1e-4)  # half-way through the cosine
  np.testing.assert_allclose(sched(110), 0.0, atol=1e-6)


def test_freeze_gives_zero_updates_and_trains_the_rest():
  params = {"image": {"stage1": {"kernel": jnp.ones(3)}, "stage3": {"kernel": jnp.ones(3)}},
            "text": {"embeddings": {"embedding": jnp.ones(2)}}, "head": {"kernel": jnp.ones(2)}}
  tx, _ = optimizers.make_optimizer(cfg(name="sgd", momentum=0.0,
                                        freeze=("image/stage1", "text")), params, 10, 0)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(updates)}
  assert np.all(flat["image/stage1/kernel"] == 0) and np.all(flat["text/embeddings/embedding"] == 0)
  assert np.all(flat["image/stage3/kernel"] != 0) and np.all(flat["head/kernel"] != 0)


def test_freeze_pattern_that_matches_nothing_is_an_error():
  with pytest.raises(ValueError, match="matches no parameter"):
    optimizers.make_optimizer(cfg(freeze=("imgae/stage1",)), {"image": {"w": jnp.ones(1)}}, 10, 0)


def test_clipping_bounds_the_update():
  params = {"w": jnp.zeros(4)}
  tx, _ = optimizers.make_optimizer(cfg(name="sgd", momentum=0.0, schedule="constant",
                                        grad_clip_norm=1.0), params, 10, 0)
  updates, _ = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-5)


def test_adamw_decays_weights():
  params = {"w": jnp.ones(2)}
  tx, _ = optimizers.make_optimizer(cfg(name="adamw", weight_decay=0.5, schedule="constant",
                                        learning_rate=0.1), params, 10, 0)
  updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones(2), rtol=1e-5)


def test_unknown_optimizer_lists_valid():
  with pytest.raises(ValueError, match="adamw"):
    optimizers.make_optimizer(cfg(name="lamb"), {"w": jnp.ones(1)}, 10, 0)
