"""Adapters from a Linen model to the functions saliency methods differentiate.

An apply function is `apply(batch, perturbations=None) -> (logits [N, K], out)` where `out`
holds the model's named intermediates and `perturbations` maps some of those names
("image/stage4", "text/embedding_output", ...) to arrays added to them, through Linen's
`perturb` collection (no model surgery). From it:
  * `input_function(apply, batch, keys)`: inputs {key: array} -> logits, with the rest of the
    batch fixed; a key is a batch entry ("image", "meta") or an intermediate, which is then
    *replaced* by the given value (valid for intermediates that depend only on inputs held
    fixed, e.g. the text embedding output when attributing tokens).
  * `layer_activations_and_gradients`: A and d score / d A at a named layer, one pass.
"""
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

ApplyFn = Callable[..., tuple[jax.Array, dict]]


def linen_apply_fn(model, variables: Mapping[str, Any], **apply_kwargs) -> ApplyFn:
  """apply(batch, perturbations) for a Linen module whose __call__ returns (logits, out).

  apply_kwargs are passed to `model.apply` (e.g. train=False for jaxmm models)."""
  base = {k: v for k, v in variables.items() if k != "perturbations"}

  def apply(batch, perturbations: Mapping[str, jax.Array] | None = None):
    v = dict(base)
    if perturbations:
      # Linen needs every perturbation variable once the collection is given: zeros (which
      # XLA folds away) for the intermediates not perturbed.
      shapes = jax.eval_shape(lambda b: model.apply(base, b, **apply_kwargs)[1], batch)
      full = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
      full.update(perturbations)
      v["perturbations"] = traverse_util.unflatten_dict(full, sep="/")
    return model.apply(v, batch, **apply_kwargs)

  return apply


def check_layer(out: Mapping[str, Any], layer: str) -> None:
  if layer not in out:
    raise KeyError(f"layer {layer!r} is not a named intermediate of the model; valid layers: "
                   f"{sorted(out)}")


def input_function(apply: ApplyFn, batch: Mapping[str, jax.Array],
                   keys) -> Callable[[dict], jax.Array]:
  """f(inputs) -> logits with `inputs[k]` substituted for batch entry / intermediate k."""
  keys = tuple(keys)
  intermediates = [k for k in keys if k not in batch]
  actual = {}
  if intermediates:
    _, out = apply(batch)
    for key in intermediates:
      check_layer(out, key)
    actual = {key: jax.lax.stop_gradient(out[key]) for key in intermediates}

  def f(inputs: Mapping[str, jax.Array]) -> jax.Array:
    unknown = set(inputs) - set(keys)
    if unknown:
      raise KeyError(f"inputs {sorted(unknown)} were not declared in keys {list(keys)}")
    fed = {**batch, **{k: v for k, v in inputs.items() if k in batch}}
    deltas = {k: inputs[k] - actual[k] for k in intermediates}
    return apply(fed, deltas)[0]

  return f


def inputs_of(apply: ApplyFn, batch: Mapping[str, jax.Array], keys) -> dict[str, jax.Array]:
  """The actual values of `keys` (batch entries, or intermediates from one forward pass)."""
  out = None
  values = {}
  for key in keys:
    if key in batch:
      values[key] = batch[key]
    else:
      if out is None:
        _, out = apply(batch)
      check_layer(out, key)
      values[key] = out[key]
  return values


def layer_activations_and_gradients(apply: ApplyFn, batch, layer: str, score_fn: Callable
                                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(logits, A, G): the activations A at `layer` and G = d sum_n score_fn(logits)[n] / d A.

  One forward and one backward pass: the gradient is taken with respect to a zero
  perturbation of the layer. score_fn: logits [N, K] -> scores [N].
  """
  shapes = jax.eval_shape(lambda b: apply(b)[1], batch)
  check_layer(shapes, layer)
  zero = jnp.zeros(shapes[layer].shape, shapes[layer].dtype)

  def total_score(delta):
    logits, out = apply(batch, {layer: delta})
    return jnp.sum(score_fn(logits)), (logits, out[layer])

  grads, (logits, activations) = jax.grad(total_score, has_aux=True)(zero)
  return logits, activations, grads
