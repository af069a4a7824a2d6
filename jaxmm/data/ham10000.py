"""ham10000: the HAM10000 release read from a manual download (paper 000_e8883a90876d02cb.txt).

Expected layout of the manual folder (the Harvard Dataverse release, doi:10.7910/DVN/DBW86T;
Kaggle's "skin-cancer-mnist-ham10000" has the same names), archives unzipped in place:

  HAM10000_metadata.csv        lesion_id,image_id,dx,dx_type,age,sex,localization
  HAM10000_images_part_1/      <image_id>.jpg
  HAM10000_images_part_2/      <image_id>.jpg
  HAM10000_segmentations_lesion_tschandl/   <image_id>_segmentation.png (optional)

One example per CSV row: the image resized to image_size (RGB uint8), the lesion mask as
`roi_mask` (nearest-resized, {0, 1}, `has_roi_mask` 1; all zeros and `has_roi_mask` 0 when the
segmentation folder is absent; an all-zero mask file is an empty ROI, `has_roi_mask` 1), the
7-class `label` (synthetic_derm's class names and order, so configs and models are shared),
`malignant` (mel, bcc, akiec), and the raw metadata: `age` (NaN when blank), `sex`,
`localization`, `dx_type` lower-cased with blanks as "unknown". Splits are
64/16/20 grouped by lesion_id and stratified by dx (section 3 of paper 000). The metadata
encoding statistics (training-median age imputation, z-score) are fitted on the train split
when the dataset is prepared and saved next to the records (jaxmm.data.saved_statistics).

Bad rows (unknown dx/sex/localization/dx_type, non-numeric age, a missing, empty or
undecodable image or mask, a 16-bit or float file, a mask whose size differs from its image's
or whose pixels are non-zero but all below 128 (image_files), a repeated image_id, an empty id)
stop the build with the CSV line, or are skipped and counted with `skip_bad_rows=True` (see
manual_base).
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
from jaxmm.data.synthetic_derm import CLASS_NAMES, MALIGNANT_CLASSES

METADATA_CSV = "HAM10000_metadata.csv"
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
DX_TYPES = metadata.DX_TYPES + (metadata.UNKNOWN,)
LAYOUT = manual_dir.Layout(
    dataset="ham10000",
    required=((METADATA_CSV, ",".join(COLUMNS)),
              (IMAGE_DIRS[0] + "/", "<image_id>.jpg"),
              (IMAGE_DIRS[1] + "/", "<image_id>.jpg")),
    optional=((MASK_DIR + "/", "<image_id>_segmentation.png lesion masks -> roi_mask"),),
    source="https://doi.org/10.7910/DVN/DBW86T (Harvard Dataverse: HAM10000_images_part_1.zip, "
           "HAM10000_images_part_2.zip, HAM10000_metadata as original CSV, "
           "HAM10000_segmentations_lesion_tschandl.zip)")


def image_index(root: str) -> dict[str, str]:
  """image_id -> path of its JPEG in either image folder."""
  return manual_base.jpeg_index(os.path.join(root, folder) for folder in IMAGE_DIRS)


def parse_row(fields: dict, images: dict, mask_dir: str | None) -> dict:
  """Validated values and file paths of one CSV row; raises bad_rows.BadInput."""
  image_id = manual_base.nonempty("image_id", fields["image_id"])
  out = {
      "image_id": image_id,
      "lesion_id": manual_base.nonempty("lesion_id", fields["lesion_id"]),
      "dx": manual_base.category("dx", fields["dx"], CLASS_NAMES, blank=None),
      "age": manual_base.parse_age("age", fields["age"]),
      "sex": manual_base.category("sex", fields["sex"], metadata.SEXES),
      "localization": manual_base.category("localization", fields["localization"],
                                           metadata.LOCALIZATIONS),
      "dx_type": manual_base.category("dx_type", fields["dx_type"], DX_TYPES),
      "image_path": images.get(image_id),
      "mask_path": None,
  }
  if out["image_path"] is None:
    raise bad_rows.BadInput("missing_image", f"{image_id}.jpg is in neither {IMAGE_DIRS[0]}/ "
                                             f"nor {IMAGE_DIRS[1]}/")
  manual_base.existing_file(out["image_path"], "image")
  if mask_dir is not None:
    out["mask_path"] = manual_base.existing_file(
        os.path.join(mask_dir, f"{image_id}_segmentation.png"), "mask")
  return out


class Ham10000(manual_base.ManualBuilder):
  """HAM10000 dermoscopy images + metadata (+ lesion masks) from a manual download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      manual_base.ManualConfig(name="default", image_size=224,
                               description="224 px (paper 000's ResNet-50 input), strict"),
  ]
  DEFAULT_CONFIG_NAME = "default"
  LAYOUT = LAYOUT
  CSV_FILE = METADATA_CSV
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()
  META_VOCABULARIES = metadata.HAM10000_VOCABULARIES

  def read_entries(self, root, log):
    images = image_index(root)
    mask_dir = os.path.join(root, MASK_DIR)
    mask_dir = mask_dir if os.path.isdir(mask_dir) else None
    entries, seen, rows = [], {}, 0
    for row in release_csv.read_rows(os.path.join(root, METADATA_CSV), COLUMNS):
      rows += 1
      key = row.fields.get("image_id", "")
      if manual_base.log_table_problem(log, METADATA_CSV, row, key):
        continue
      try:
        values = parse_row(row.fields, images, mask_dir)
        manual_base.first_seen(seen, values["image_id"], row.line, "image_id")
      except bad_rows.BadInput as problem:
        log.add(METADATA_CSV, row.line, key, problem)
        continue
      entries.append(manual_base.Entry(key=values["image_id"], line=row.line,
                                       group=values["lesion_id"],
                                       stratum=CLASS_NAMES.index(values["dx"]), fields=values))
    return entries, {"csv_rows": rows, "roi_masks": mask_dir is not None}

  def make_example(self, root, entry):
    del root  # the entry holds absolute paths
    values, size = entry.fields, self.builder_config.image_size
    image = image_files.load_image(values["image_path"], size, "RGB")
    mask = np.zeros((size, size), np.uint8)
    if values["mask_path"] is not None:
      mask = image_files.load_mask(values["mask_path"], size, values["image_path"])
    return {
        "image": image,
        "roi_mask": mask,
        "has_roi_mask": int(values["mask_path"] is not None),
        "label": CLASS_NAMES.index(values["dx"]),
        "malignant": int(values["dx"] in MALIGNANT_CLASSES),
        "age": np.float32(values["age"]),
        **{k: values[k] for k in ("sex", "localization", "dx_type", "lesion_id", "image_id")},
    }

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": manual_base.image_feature(size, 3),
            "roi_mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8,
                                             encoding="zlib"),
            "has_roi_mask": tfds.features.Scalar(dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "malignant": tfds.features.Scalar(dtype=np.int32),
            "age": tfds.features.Scalar(dtype=np.float32),
            "sex": text, "localization": text, "dx_type": text,
            "lesion_id": text, "image_id": text,
        }),
        supervised_keys=("image", "label"),
        homepage="https://doi.org/10.7910/DVN/DBW86T",
        metadata=tfds.core.MetadataDict(),
    )
