"""synthetic_derm: a TF-free tfds builder shaped like HAM10000 (paper 000_e8883a90876d02cb.txt).

Seven diagnoses with the table 1 frequencies, the HAM10000 metadata fields, several images per
lesion, 64/16/20 lesion-grouped stratified splits, exact lesion masks and a planted ruler
confounder.

How the signal is built (so image-only, metadata-only and fusion models differ by design):
each class is a mixture over seven visual appearances (derm_rendering.APPEARANCES), with
overlapping mixtures for the pairs mel/nv, bkl/akiec and bcc/df; given its appearance an image
is independent of the class. Metadata (age, sex, body site, dx_type) is drawn from the class
alone, independently of the image, and separates exactly those pairs (mel older, histo, back
and legs; nv younger, follow-up; akiec face/scalp/hand; df lower extremity, consensus ...) while
being weak across pairs. Image and metadata are therefore conditionally independent given the
class and complementary. The ruler (`confounder`) is a class-dependent shortcut: its marks
are always outside the lesion.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxmm.data import derm_rendering
from jaxmm.data import metadata
from jaxmm.data import splits
from jaxmm.data import synthetic_base

CLASS_NAMES = ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")
# Percentages of table 1 of paper 000.
CLASS_FREQUENCIES = (66.95, 11.11, 10.97, 5.13, 3.27, 1.42, 1.15)
MALIGNANT_CLASSES = ("mel", "bcc", "akiec")
SPLIT_FRACTIONS = (0.64, 0.16, 0.20)

# P(appearance | class); columns follow derm_rendering.APPEARANCE_NAMES.
APPEARANCE_PROBS = np.array([
    # regular irregular keratotic scaly pearly white_patch lacunae
    [0.78, 0.14, 0.05, 0.00, 0.00, 0.03, 0.00],  # nv
    [0.28, 0.62, 0.06, 0.00, 0.00, 0.04, 0.00],  # mel
    [0.08, 0.04, 0.58, 0.25, 0.05, 0.00, 0.00],  # bkl
    [0.00, 0.06, 0.02, 0.12, 0.52, 0.28, 0.00],  # bcc
    [0.00, 0.02, 0.30, 0.52, 0.16, 0.00, 0.00],  # akiec
    [0.00, 0.05, 0.00, 0.00, 0.10, 0.00, 0.85],  # vasc
    [0.08, 0.02, 0.00, 0.05, 0.30, 0.55, 0.00],  # df
])
# P(ruler in the photograph | class): the planted shortcut.
RULER_RATES = np.array([0.07, 0.60, 0.08, 0.30, 0.30, 0.05, 0.08])

AGE_MEAN_STD = np.array([[42, 16], [60, 15], [58, 14], [68, 11], [68, 11], [48, 20], [45, 12]],
                        np.float64)
MALE_RATES = np.array([0.50, 0.60, 0.55, 0.60, 0.68, 0.50, 0.45])
AGE_MISSING_RATE = 0.006
SEX_UNKNOWN_RATE = 0.006
LOCALIZATION_WEIGHTS = (
    {"trunk": .25, "back": .2, "lower extremity": .2, "abdomen": .12, "upper extremity": .1,
     "chest": .05},
    {"back": .35, "lower extremity": .25, "upper extremity": .1, "trunk": .1, "face": .06,
     "chest": .06},
    {"face": .12, "trunk": .2, "back": .25, "upper extremity": .12, "chest": .12,
     "lower extremity": .1},
    {"back": .25, "face": .3, "trunk": .1, "neck": .08, "chest": .1, "upper extremity": .05},
    {"face": .4, "scalp": .12, "hand": .15, "upper extremity": .1, "ear": .06, "neck": .05},
    {"trunk": .35, "lower extremity": .15, "abdomen": .12, "back": .12, "upper extremity": .1},
    {"lower extremity": .65, "upper extremity": .15, "trunk": .05},
)
# P(dx_type | class) over metadata.DX_TYPES = (histo, follow_up, consensus, confocal).
DX_TYPE_PROBS = np.array([
    [0.25, 0.50, 0.20, 0.05],
    [0.92, 0.00, 0.06, 0.02],
    [0.35, 0.00, 0.50, 0.15],
    [0.94, 0.00, 0.05, 0.01],
    [0.90, 0.00, 0.06, 0.04],
    [0.35, 0.00, 0.65, 0.00],
    [0.30, 0.00, 0.70, 0.00],
])
# Images per lesion: P(1), P(2), ... (mean 1.34, as 10,015 images of 7,470 HAM10000 lesions).
IMAGES_PER_LESION_PROBS = np.array([0.78, 0.13, 0.06, 0.03])


def localization_probs(weights: dict) -> np.ndarray:
  """P(localization) over metadata.LOCALIZATIONS: the weights plus a small floor everywhere."""
  p = np.full(len(metadata.LOCALIZATIONS), 0.01)
  for name, w in weights.items():
    p[metadata.LOCALIZATIONS.index(name)] += w
  return p / p.sum()


LOCALIZATION_PROBS = np.stack([localization_probs(w) for w in LOCALIZATION_WEIGHTS])


def class_image_counts(num_examples: int) -> np.ndarray:
  """Images per class matching table 1 by largest remainder: int64 [7] summing to N."""
  exact = np.asarray(CLASS_FREQUENCIES) / sum(CLASS_FREQUENCIES) * num_examples
  counts = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:num_examples - counts.sum()]] += 1
  return counts


def lesion_sizes(rng: np.random.Generator, num_images: int) -> list[int]:
  """Splits `num_images` images of one class into lesions of 1-4 images each."""
  sizes = []
  while num_images > 0:
    size = min(int(rng.choice(len(IMAGES_PER_LESION_PROBS), p=IMAGES_PER_LESION_PROBS)) + 1,
               num_images)
    sizes.append(size)
    num_images -= size
  return sizes


@dataclasses.dataclass(frozen=True)
class DermPlan:
  """Everything but the pixels, per image (arrays of length N)."""
  label: np.ndarray        # int64 class index
  lesion: np.ndarray       # int64 lesion index (images of one lesion share everything below)
  appearance: np.ndarray   # int64 index into derm_rendering.APPEARANCES
  confounder: np.ndarray   # bool: a ruler is in the photograph
  age: np.ndarray          # float32 years, NaN when missing
  sex: np.ndarray          # object str
  localization: np.ndarray  # object str
  dx_type: np.ndarray      # object str


def lesion_record(seed: int, lesion: int, label: int) -> dict:
  """Appearance and metadata of one lesion, from its own generator."""
  rng = np.random.default_rng([seed, 1, lesion])
  mean, std = AGE_MEAN_STD[label]
  age = float(np.clip(np.round(rng.normal(mean, std) / 5) * 5, 0, 90))
  if rng.uniform() < AGE_MISSING_RATE:
    age = np.nan
  sex = "male" if rng.uniform() < MALE_RATES[label] else "female"
  if rng.uniform() < SEX_UNKNOWN_RATE:
    sex = metadata.UNKNOWN
  return {
      "appearance": int(rng.choice(len(APPEARANCE_PROBS[label]), p=APPEARANCE_PROBS[label])),
      "age": age, "sex": sex,
      "localization": metadata.LOCALIZATIONS[rng.choice(15, p=LOCALIZATION_PROBS[label])],
      "dx_type": metadata.DX_TYPES[rng.choice(4, p=DX_TYPE_PROBS[label])],
  }


def plan_dataset(num_examples: int, seed: int) -> DermPlan:
  """Deterministic labels, lesions, appearances, rulers and metadata of N images."""
  rng = np.random.default_rng([seed, 0])
  lesion_labels, lesion_counts = [], []
  for label, count in enumerate(class_image_counts(num_examples)):
    sizes = lesion_sizes(rng, int(count))
    lesion_labels += [label] * len(sizes)
    lesion_counts += sizes
  order = rng.permutation(len(lesion_labels))
  lesion_labels = np.asarray(lesion_labels)[order]
  lesion_counts = np.asarray(lesion_counts)[order]
  records = [lesion_record(seed, j, int(c)) for j, c in enumerate(lesion_labels)]
  lesion = np.repeat(np.arange(len(lesion_labels)), lesion_counts)
  label = lesion_labels[lesion]
  column = lambda key, dtype: np.array([records[j][key] for j in lesion], dtype)
  image_rng = np.random.default_rng([seed, 3])
  return DermPlan(label=label, lesion=lesion, appearance=column("appearance", np.int64),
                  confounder=image_rng.uniform(size=len(label)) < RULER_RATES[label],
                  age=column("age", np.float32), sex=column("sex", object),
                  localization=column("localization", object),
                  dx_type=column("dx_type", object))


def image_id(index: int) -> str:
  return f"ISIC_{index:07d}"


def lesion_id(lesion: int) -> str:
  return f"HAM_{lesion:07d}"


def render_example(plan: DermPlan, index: int, image_size: int, seed: int) -> dict:
  """The full example (features of SyntheticDerm) of image `index` of `plan`."""
  lesion = int(plan.lesion[index])
  pixels = derm_rendering.render([seed, 2, lesion], [seed, 4, index],
                                 int(plan.appearance[index]), image_size,
                                 bool(plan.confounder[index]))
  label = int(plan.label[index])
  return {
      **pixels,
      "label": label,
      "malignant": int(CLASS_NAMES[label] in MALIGNANT_CLASSES),
      "age": np.float32(plan.age[index]),
      "sex": plan.sex[index],
      "localization": plan.localization[index],
      "dx_type": plan.dx_type[index],
      "lesion_id": lesion_id(lesion),
      "image_id": image_id(index),
      "confounder": int(plan.confounder[index]),
  }


def split_indices(plan: DermPlan, seed: int) -> dict[str, np.ndarray]:
  """64/16/20 split of image indices, grouped by lesion, stratified by class."""
  return splits.grouped_stratified_split(plan.label, plan.lesion, SPLIT_FRACTIONS, seed)


class SyntheticDermConfig(synthetic_base.SyntheticConfig):
  """Size and seed of a synthetic_derm build; `name` must identify these values."""
  unit = "images"


class SyntheticDerm(synthetic_base.SyntheticBuilder):
  """HAM10000-shaped synthetic dermoscopy dataset (array_record, no TensorFlow needed)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      SyntheticDermConfig(name="small", num_examples=1200, image_size=32,
                          description="1,200 images of 32 px (tests, smoke runs)"),
      SyntheticDermConfig(name="default", num_examples=3000, image_size=64,
                          description="3,000 images of 64 px"),
      SyntheticDermConfig(name="large", num_examples=10015, image_size=224,
                          description="10,015 images of 224 px (HAM10000's size)"),
  ]
  DEFAULT_CONFIG_NAME = "default"

  plan_dataset = staticmethod(plan_dataset)
  split_indices = staticmethod(split_indices)
  render_example = staticmethod(render_example)
  example_key = staticmethod(image_id)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                          encoding="zlib"),
            "roi_mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8,
                                             encoding="zlib"),
            "confounder_mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8,
                                                    encoding="zlib"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "malignant": tfds.features.Scalar(dtype=np.int32),
            "age": tfds.features.Scalar(dtype=np.float32),
            "sex": text, "localization": text, "dx_type": text,
            "lesion_id": text, "image_id": text,
            "confounder": tfds.features.Scalar(dtype=np.uint8),
        }),
        supervised_keys=("image", "label"),
    )
