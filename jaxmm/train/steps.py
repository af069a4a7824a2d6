"""Pure training and evaluation steps, and the train state they act on.

`train_step` and `eval_step` are module-level pure functions; the loop binds their static
dependencies (model, optimizer, loss) with `functools.partial` and jits them with the state
donated. Randomness inside a step is `fold_in(state.rng, state.step)`.
"""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position (which is `step`)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, so it checkpoints as a plain array


def _variables(state_params, batch_stats):
  variables = {"params": state_params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def model_inputs(batch: dict) -> dict:
  """The batch minus the keys a model must not see (labels, masks, grouping fields)."""
  return {k: v for k, v in batch.items() if k in ("image", "text_ids", "text_mask",
                                                  "text_type_ids", "meta")}


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               loss_fn: Callable) -> tuple[TrainState, dict]:
  """One optimisation step on a (sharded) global batch.

  A non-finite loss or gradient leaves the state unchanged (only the step advances) and is
  reported in the returned metrics, so the loop can stop naming the step while the last
  good parameters are still intact.
  """
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  weights = batch.get("weight")

  def loss_and_aux(params):
    variables = _variables(params, state.batch_stats)
    mutable = ["batch_stats"] if state.batch_stats else []
    (logits, _), new_vars = model.apply(variables, model_inputs(batch), train=True,
                                        rngs={"dropout": dropout_key}, mutable=mutable)
    loss = loss_fn(logits, batch["label"], weights)
    return loss, new_vars.get("batch_stats", state.batch_stats)

  (loss, new_batch_stats), grads = jax.value_and_grad(loss_and_aux, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(step=state.step + 1,
                            params=keep(new_params, state.params),
                            batch_stats=keep(new_batch_stats, state.batch_stats),
                            opt_state=keep(new_opt_state, state.opt_state))
  return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def eval_step(state: TrainState, batch: dict, *, model) -> jax.Array:
  """Logits [N, K] in float32 for a batch, in inference mode."""
  logits, _ = model.apply(_variables(state.params, state.batch_stats), model_inputs(batch),
                          train=False)
  return logits.astype(jnp.float32)
