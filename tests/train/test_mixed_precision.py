"""bfloat16 compute in the real train step: parameters, optimizer state, logits and loss stay
float32, and the step's loss and update track the float32 step's."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmm.models.build import build_model
from jaxmm.train import losses
from jaxmm.train.steps import TrainState, train_step
from tests.models.test_fusion import make_batch, tiny_config

MODALITIES = ("image", "meta")


def one_step(dtype: str):
  model = build_model(tiny_config(MODALITIES, "concat", dtype=dtype))
  batch = make_batch(MODALITIES)
  batch["label"] = np.arange(len(batch["image"])) % 3
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch,
                         train=False)
  tx = optax.adam(1e-3)
  state = TrainState(step=jnp.asarray(0, jnp.int32), params=variables["params"],
                     batch_stats=variables.get("batch_stats", {}),
                     opt_state=tx.init(variables["params"]),
                     rng=jax.random.key_data(jax.random.key(2)))
  step = jax.jit(functools.partial(train_step, model=model, tx=tx,
                                   loss_fn=losses.make_loss_fn(False)), donate_argnums=(0,))
  before = jax.device_get(state.params)
  new_state, metrics = step(state, batch)
  return before, jax.device_get(new_state), jax.device_get(metrics)


def test_bfloat16_step_keeps_float32_state_and_tracks_float32():
  before, state16, m16 = one_step("bfloat16")
  _, state32, m32 = one_step("float32")
  for tree in (state16.params, state16.opt_state, state16.batch_stats):
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(tree)
               if np.issubdtype(x.dtype, np.floating))
  assert m16["loss"].dtype == np.float32 and bool(m16["finite"])
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)
  # Adam's first step moves each weight by about the learning rate in the gradient's sign
  # direction; bfloat16 gradients agree with float32 ones in sign almost everywhere.
  delta16 = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(state16.params),
                                                           jax.tree.leaves(before))])
  delta32 = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(state32.params),
                                                           jax.tree.leaves(before))])
  moved = np.abs(delta32) > 5e-4
  assert np.mean(np.sign(delta16[moved]) == np.sign(delta32[moved])) > 0.95
