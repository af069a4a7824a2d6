"""isic2020: the ISIC 2020 challenge training set read from a manual download (paper 002).

Expected layout of the manual folder (the challenge's training JPEGs and ground truth, e.g.
from https://challenge2020.isic-archive.com/ or Kaggle's "siim-isic-melanoma-classification"):

  train.csv          image_name,patient_id,sex,age_approx,anatom_site_general_challenge,
                     diagnosis,benign_malignant,target
  jpeg/train/        <image_name>.jpg    (.JPG too, as HAM10000's images)

One example per CSV row: the image resized to image_size (RGB uint8), the binary `label`
(`target`: 0 benign, 1 malignant, checked against `benign_malignant`), and the metadata under
the field names HAM10000 uses so the same metadata code serves both: `age` (age_approx, NaN
when blank), `sex` (blank -> "unknown"), `localization` (anatom_site_general_challenge over
SITES, blank -> "unknown"); plus `diagnosis`, `patient_id` and `image_id` (= image_name).
Splits are 64/16/20 grouped by patient_id, stratified by target; the metadata encoder (age
median and z-score fitted on train, one-hot sex (3) and site (7)) is saved with the dataset.
`px32` is paper 002's CNN input size.
"""
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxmm.data import bad_rows
from jaxmm.data import image_files
from jaxmm.data import manual_base
from jaxmm.data import manual_dir
from jaxmm.data import metadata
from jaxmm.data import release_csv

TRAIN_CSV = "train.csv"
IMAGE_DIR = os.path.join("jpeg", "train")
COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
           "diagnosis", "benign_malignant", "target")
CLASS_NAMES = ("benign", "malignant")
SITES = ("head/neck", "upper extremity", "lower extremity", "torso", "palms/soles",
         "oral/genital", metadata.UNKNOWN)
VOCABULARIES = {"sex": metadata.SEXES, "localization": SITES}
LAYOUT = manual_dir.Layout(
    dataset="isic2020",
    required=((TRAIN_CSV, ",".join(COLUMNS)), (IMAGE_DIR + "/", "<image_name>.jpg")),
    source="https://challenge2020.isic-archive.com/ (training JPEGs + training ground truth "
           "CSV, renamed train.csv) or Kaggle's siim-isic-melanoma-classification (train.csv, "
           "jpeg/train/)")


def parse_target(target: str, benign_malignant: str) -> int:
  """0 / 1 from `target`, which must agree with `benign_malignant`; raises BadInput."""
  if target not in ("0", "1"):
    raise bad_rows.BadInput("unknown_category", f"target {target!r} is not 0 or 1")
  named = manual_base.category("benign_malignant", benign_malignant, CLASS_NAMES, blank=None)
  if CLASS_NAMES.index(named) != int(target):
    raise bad_rows.BadInput("label_mismatch",
                            f"target {target} disagrees with benign_malignant {named!r}")
  return int(target)


def parse_row(fields: dict, image_dir: str, images: dict) -> dict:
  """Validated values and the image path (from `images`, image_name -> path) of one CSV row;
  raises bad_rows.BadInput."""
  image_id = manual_base.nonempty("image_name", fields["image_name"])
  out = {
      "image_id": image_id,
      "patient_id": manual_base.nonempty("patient_id", fields["patient_id"]),
      "label": parse_target(fields["target"], fields["benign_malignant"]),
      "age": manual_base.parse_age("age_approx", fields["age_approx"]),
      "sex": manual_base.category("sex", fields["sex"], metadata.SEXES),
      "localization": manual_base.category("anatom_site_general_challenge",
                                           fields["anatom_site_general_challenge"], SITES),
      "diagnosis": fields["diagnosis"].lower(),
      "image_path": images.get(image_id, os.path.join(image_dir, f"{image_id}.jpg")),
  }
  manual_base.existing_file(out["image_path"], "image")
  return out


class Isic2020(manual_base.ManualBuilder):
  """ISIC 2020 melanoma (benign / malignant) images + metadata from a manual download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      manual_base.ManualConfig(name="default", image_size=224, description="224 px, strict"),
      manual_base.ManualConfig(name="px32", image_size=32,
                               description="32 px (paper 002's CNN input), strict"),
  ]
  DEFAULT_CONFIG_NAME = "default"
  LAYOUT = LAYOUT
  CSV_FILE = TRAIN_CSV
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()
  META_VOCABULARIES = VOCABULARIES
  META_COLUMNS = {"age": "age_approx", "localization": "anatom_site_general_challenge"}

  def read_entries(self, root, log):
    image_dir = os.path.join(root, IMAGE_DIR)
    images = manual_base.jpeg_index([image_dir])
    entries, seen, rows = [], {}, 0
    for row in release_csv.read_rows(os.path.join(root, TRAIN_CSV), COLUMNS):
      rows += 1
      key = row.fields.get("image_name", "")
      if manual_base.log_table_problem(log, TRAIN_CSV, row, key):
        continue
      try:
        values = parse_row(row.fields, image_dir, images)
        manual_base.first_seen(seen, values["image_id"], row.line, "image_name")
      except bad_rows.BadInput as problem:
        log.add(TRAIN_CSV, row.line, key, problem)
        continue
      entries.append(manual_base.Entry(key=values["image_id"], line=row.line,
                                       group=values["patient_id"], stratum=values["label"],
                                       fields=values))
    return entries, {"csv_rows": rows}

  def make_example(self, root, entry):
    del root  # the entry holds absolute paths
    values = entry.fields
    return {
        "image": image_files.load_image(values["image_path"], self.builder_config.image_size,
                                        "RGB"),
        "label": values["label"],
        "age": np.float32(values["age"]),
        **{k: values[k] for k in ("sex", "localization", "diagnosis", "patient_id",
                                  "image_id")},
    }

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": manual_base.image_feature(self.builder_config.image_size, 3),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "age": tfds.features.Scalar(dtype=np.float32),
            "sex": text, "localization": text, "diagnosis": text,
            "patient_id": text, "image_id": text,
        }),
        supervised_keys=("image", "label"),
        homepage="https://challenge2020.isic-archive.com/",
        metadata=tfds.core.MetadataDict(),
    )
