"""check_shapes: a model variable only the checkpoint or only the model has is a mismatch
(another model, e.g. another fusion head), named; optimizer internals on one side are not."""
import jax
import jax.numpy as jnp
import pytest

from jaxmm.train import checkpointing


def tree(head: str, extra_opt: bool = False) -> dict:
  leaf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  state = {"params": {"meta": {"kernel": leaf(4, 8)}, head: {"kernel": leaf(8, 3)}},
           "batch_stats": {}, "opt_state": {"mu": leaf(4, 8)}}
  if extra_opt:
    state["opt_state"]["nu"] = leaf(4, 8)
  return state


def test_a_parameter_only_the_model_has_is_named():
  with pytest.raises(checkpointing.CheckpointMismatch,
                     match=r"ckpt/3 does not match the config: params/film/kernel is in the model "
                           r"the config builds but not in the checkpoint"):
    checkpointing.check_shapes(tree("film"), tree("concat"), "ckpt/3")


def test_a_parameter_only_the_checkpoint_has_is_named():
  saved = tree("concat")
  saved["batch_stats"] = {"image": {"bn": {"mean": jax.ShapeDtypeStruct((8,), jnp.float32)}}}
  with pytest.raises(checkpointing.CheckpointMismatch,
                     match=r"batch_stats/image/bn/mean is in the checkpoint but not in the model"):
    checkpointing.check_shapes(tree("concat"), saved, "ckpt/3")


def test_optimizer_leaves_on_one_side_are_not_a_mismatch():
  checkpointing.check_shapes(tree("concat"), tree("concat", extra_opt=True), "ckpt/3")
  checkpointing.check_shapes(tree("concat", extra_opt=True), tree("concat"), "ckpt/3")


# A failed orbax read can leave callbacks aimed at orbax's closed asyncio loop (see the
# checkpointing docstring); only that exact unraisable error is ignored.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in\x3a None[\s\S]*RuntimeError\x3a Event loop is closed"
    r":pytest.PytestUnraisableExceptionWarning")
def test_restoring_another_fusion_heads_checkpoint_names_the_parameter(tmp_path):
  # Same encoders, another head: every shared leaf has its shape, so only the names differ;
  # this was reported as "CheckpointUnreadable: no readable checkpoint" (tree structures do
  # not match), as if the files were damaged.
  concat = {"params": {"meta": {"kernel": jnp.ones((4, 8))},
                       "head": {"dense_0": {"kernel": jnp.ones((8, 3))}}}}
  late = {"params": {"meta": {"kernel": jnp.ones((4, 8))},
                     "head": {"logit_weights": jnp.ones((2,)),
                              "dense_0": {"kernel": jnp.ones((8, 3))}}}}
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, concat, {"step": 1})
  with pytest.raises(checkpointing.CheckpointMismatch,
                     match=r"params/head/logit_weights is in the model the config builds but not "
                           r"in the checkpoint"):
    ckpt.restore(checkpointing.abstract_like(late))
  ckpt.save(2, late, {"step": 2})
  with pytest.raises(checkpointing.CheckpointMismatch,
                     match=r"params/head/logit_weights is in the checkpoint but not in the model"):
    ckpt.restore(checkpointing.abstract_like(concat))
  assert ckpt.latest.all_steps() == [1, 2]  # nothing set aside as damaged
  ckpt.close()
