"""What the synthetic builders share: a size/seed config and plan -> split -> render generation.

A synthetic builder plans the whole dataset first (labels, groups, metadata: cheap arrays),
assigns grouped stratified splits on the plan, then renders pixels and text example by
example while writing each split, so even the 224 px configs never hold all images in memory.
Subclasses define `_info` and the three hooks `plan_dataset`, `split_indices`, `render_example`
(static functions of the plan) and `example_key`.
"""
import dataclasses
from typing import Any, Callable, ClassVar

import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Size and seed of a synthetic build; `name` must identify these values."""
  num_examples: int = 2000
  image_size: int = 64
  seed: int = 0
  unit: ClassVar[str] = "examples"

  @classmethod
  def custom(cls, num_examples: int, image_size: int, seed: int = 0) -> "SyntheticConfig":
    """A config whose name encodes its parameters (so builds never collide on disk)."""
    return cls(name=f"n{num_examples}_px{image_size}_seed{seed}", num_examples=num_examples,
               image_size=image_size, seed=seed,
               description=f"{num_examples} {cls.unit} of {image_size} px, seed {seed}")


class SyntheticBuilder(tfds.core.GeneratorBasedBuilder):
  """Deterministic generation from (config.num_examples, config.image_size, config.seed)."""

  plan_dataset: ClassVar[Callable[[int, int], Any]]
  split_indices: ClassVar[Callable[[Any, int], dict]]
  render_example: ClassVar[Callable[[Any, int, int, int], dict]]
  example_key: ClassVar[Callable[[int], str]]

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    cfg = self.builder_config
    plan = type(self).plan_dataset(cfg.num_examples, cfg.seed)
    return {name: self._generate_examples(plan, indices)
            for name, indices in type(self).split_indices(plan, cfg.seed).items()}

  def _generate_examples(self, plan: Any, indices: np.ndarray):
    cfg, cls = self.builder_config, type(self)
    for index in indices:
      yield cls.example_key(int(index)), cls.render_example(plan, int(index), cfg.image_size,
                                                            cfg.seed)
