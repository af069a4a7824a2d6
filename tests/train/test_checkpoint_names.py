"""Only "best" and "latest" name a checkpoint: a misspelt name raised nothing and silently
restored the latest one (a non-best model explained or embedded)."""
import jax
import jax.numpy as jnp
import pytest

from jaxmm.train import checkpointing


def state_at(value: float) -> dict:
  return {"params": {"kernel": jnp.full((2, 3), value)}, "step": jnp.array(0)}


def test_a_misspelt_checkpoint_name_raises_instead_of_restoring_the_latest(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  try:
    ckpt.save(1, state_at(1.0), {"step": 1}, best=True)
    ckpt.save(2, state_at(2.0), {"step": 2})
    assert (ckpt.latest_step("best"), ckpt.latest_step("latest")) == (1, 2)
    abstract = jax.eval_shape(lambda: state_at(0.0))
    state, _ = ckpt.restore(abstract, which="best")
    assert float(state["params"]["kernel"][0, 0]) == 1.0
    for name in ("bset", "Best", "last"):
      with pytest.raises(ValueError, match=r"must be one of \['best', 'latest'\], got "):
        ckpt.latest_step(name)
      with pytest.raises(ValueError, match=r"must be one of \['best', 'latest'\]"):
        ckpt.restore(abstract, which=name)
  finally:
    ckpt.close()


def test_check_checkpoint_name_names_the_key_and_the_closest_name():
  assert checkpointing.check_checkpoint_name("latest", "config.x.checkpoint") == "latest"
  with pytest.raises(ValueError, match=r"^config.x.checkpoint must be one of \['best', "
                                       r"'latest'\], got 'bset'. Did you mean 'best'\?$"):
    checkpointing.check_checkpoint_name("bset", "config.x.checkpoint")
