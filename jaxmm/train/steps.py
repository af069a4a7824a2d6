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


def update_in_cond() -> bool:
  """Whether update_if_finite runs the update in a cond by default: on CPU (see there)."""
  return jax.default_backend() == "cpu"


def describe_update_guard() -> str:
  """How train_step keeps the state after a non-finite step, for run records and benchmarks
  (the two ways round differently)."""
  return ("optimizer update in a cond on the finite flag" if update_in_cond()
          else "optimizer update selected per leaf on the finite flag")


def all_finite(tree) -> jax.Array:
  """Whether every value of every leaf of `tree` is finite (a scalar bool)."""
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else \
      jnp.asarray(True)


def update_if_finite(finite: jax.Array, state: TrainState, grads: Any, new_batch_stats: Any,
                     tx: optax.GradientTransformation, *,
                     in_cond: bool | None = None) -> tuple[Any, Any, Any, jax.Array]:
  """(params, batch_stats, opt_state, finite): after the optimizer update when `finite`, else
  the state's own; the returned `finite` is also False when the updated parameters or batch
  statistics are not finite (a finite gradient can overflow them, e.g. with a learning rate
  of 3e38; that state was checkpointed as the last good one). The overflowed state is kept,
  not replaced (choosing after the update would copy the donated optimizer state, see
  below): the loop stops at its next check, before any checkpoint or evaluation of it.

  `in_cond` (default: on CPU) runs the update inside a `lax.cond`. Selecting per leaf
  between the updated and the old values (`jnp.where`) makes XLA's copy insertion copy every
  optimizer-state buffer first, because the update writes the state in place (donated) while
  another fusion still reads the old values: an SGD-momentum update of ResNet-18's 11.7M
  parameters took 35 ms that way against 8.5 ms in a cond, AdamW on BERT-base's 110M 461
  against 138 ms (2-core Xeon). On GPU a conditional reads its predicate back to the host
  every step, so there the update is selected per leaf as before (not measured on a GPU).
  """
  old = (state.params, state.batch_stats, state.opt_state)

  def update():
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return params, new_batch_stats, new_opt_state, all_finite((params, new_batch_stats))

  if in_cond is None:
    in_cond = update_in_cond()
  if in_cond:
    return jax.lax.cond(finite, update, lambda: (*old, jnp.asarray(False)))
  *new, ok = update()
  return (*jax.tree.map(lambda n, o: jnp.where(finite, n, o), tuple(new), old), finite & ok)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               loss_fn: Callable) -> tuple[TrainState, dict]:
  """One optimisation step on a (sharded) global batch.

  A non-finite loss or gradient leaves the state unchanged (only the step advances) and is
  reported in the returned metrics ("finite" False), so the loop can stop naming the step
  while the last good parameters are still intact; non-finite updated parameters or batch
  statistics are reported alike (see update_if_finite), before anything saves them.
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
  params, batch_stats, opt_state, finite = update_if_finite(finite, state, grads,
                                                            new_batch_stats, tx)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def eval_step(state: TrainState, batch: dict, *, model) -> jax.Array:
  """Logits [N, K] in float32 for a batch, in inference mode."""
  logits, _ = model.apply(_variables(state.params, state.batch_stats), model_inputs(batch),
                          train=False)
  return logits.astype(jnp.float32)
