"""Tiny fixture trees in the official layouts of HAM10000, ISIC 2020 and MIMIC-CXR-JPG.

Each `make_*` writes real JPEG/PNG files (a few dozen pixels) and CSVs with the official column
names and realistic values, deterministically, and returns what it wrote so tests can assert
exact values: row i of a CSV is on line i + 2 (the header is line 1). Bad input is injected
with `overrides` ({row index: {column: text}}), `missing_images` / `corrupt_images` (row
indices whose image is not written / truncated), and `drop_columns`.
"""
import csv
import os

import numpy as np
from PIL import Image, ImageDraw

HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
# dx per lesion, cycled: every class present, nv the most frequent (as in HAM10000).
HAM_DX_CYCLE = ("nv", "mel", "nv", "bkl", "nv", "bcc", "nv", "akiec", "mel", "vasc", "nv", "df",
                "bkl", "nv")
HAM_DX_TYPE = {"nv": ("follow_up", "histo", "consensus"), "mel": ("histo",), "bkl":
               ("consensus", "confocal", "histo"), "bcc": ("histo",), "akiec": ("histo",),
               "vasc": ("consensus",), "df": ("consensus", "histo")}
HAM_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest",
             "foot", "neck", "scalp", "hand", "ear", "genital", "acral")
LESION_SIZES = (1, 2, 1, 3, 1, 1, 2)

ISIC_COLUMNS = ("image_name", "patient_id", "sex", "age_approx",
                "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target")
ISIC_SITES = ("torso", "lower extremity", "upper extremity", "head/neck", "", "palms/soles",
              "oral/genital")

CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                   "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                   "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                   "Pneumothorax", "Support Devices")
MIMIC_METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
# Label vectors cycled over studies ("" = not mentioned).
MIMIC_LABEL_CYCLE = (
    {"No Finding": "1.0"},
    {"Pleural Effusion": "1.0", "Pneumothorax": "0.0", "Edema": "-1.0"},
    {"Cardiomegaly": "1.0", "Support Devices": "1.0", "Consolidation": "0.0"},
    {"Atelectasis": "-1.0", "Lung Opacity": "1.0", "Pneumonia": "-1.0"},
    {"No Finding": "1.0", "Pneumothorax": "0.0"},
    {"Edema": "1.0", "Pleural Effusion": "1.0", "Enlarged Cardiomediastinum": "-1.0"},
    {"Fracture": "1.0", "Lung Lesion": "0.0", "Pleural Other": "-1.0"},
)


def write_csv(path: str, columns, rows, drop_columns=()) -> None:
  """Writes `rows` (dicts) under the header `columns` minus `drop_columns`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  kept = [c for c in columns if c not in drop_columns]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(kept)
    for row in rows:
      writer.writerow([row[c] for c in kept])


def image_colour(index: int) -> tuple:
  """The flat background colour of fixture image `index` (identifies it after resizing)."""
  return (40 + (index * 37) % 180, 60 + (index * 53) % 160, 30 + (index * 71) % 190)


def closest_colour(pixel, n: int) -> int:
  """Index of the fixture image (of the first n) whose background colour is nearest `pixel`."""
  colours = np.array([image_colour(i) for i in range(n)], np.float64)
  return int(np.argmin(np.abs(colours - np.asarray(pixel, np.float64)).sum(1)))


def lesion_box(index: int, width: int, height: int) -> tuple:
  """(left, top, right, bottom) of the lesion ellipse of image `index`."""
  dx, dy = index % 4, (index // 4) % 3
  return (width // 4 + dx - 2, height // 4 + dy - 1, 3 * width // 4 + dx - 2,
          3 * height // 4 + dy - 1)


def write_image(path: str, pixels: np.ndarray, corrupt: bool = False, fmt: str = "JPEG") -> None:
  """Saves uint8 pixels; `corrupt` keeps only the first half of the encoded file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  if corrupt:
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 2])


def lesion_image(index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
  """RGB uint8 [H, W, 3] (flat colour + darker ellipse) and its mask uint8 [H, W] in {0, 255}."""
  mask_img = Image.new("L", (width, height), 0)
  ImageDraw.Draw(mask_img).ellipse(lesion_box(index, width, height), fill=255)
  mask = np.asarray(mask_img)
  pixels = np.empty((height, width, 3), np.uint8)
  pixels[:] = image_colour(index)
  pixels[mask > 0] = (np.asarray(image_colour(index)) * 0.4).astype(np.uint8)
  return pixels, mask


def _apply(rows: list, overrides: dict | None) -> list:
  for index, values in (overrides or {}).items():
    rows[index].update(values)
  return rows


def ham10000_rows(n: int, seed: int = 0) -> list[dict]:
  """The CSV rows of a fixture HAM10000 of `n` images (lesions of 1-3 images)."""
  rng = np.random.default_rng(seed)
  rows, lesion = [], 0
  while len(rows) < n:
    dx = HAM_DX_CYCLE[lesion % len(HAM_DX_CYCLE)]
    age = "" if lesion % 9 == 4 else f"{float(5 * rng.integers(3, 17)):.1f}"
    sex = "unknown" if lesion == 5 else ("male", "female")[lesion % 2]
    site = "unknown" if lesion == 7 else HAM_SITES[lesion % len(HAM_SITES)]
    for _ in range(min(LESION_SIZES[lesion % len(LESION_SIZES)], n - len(rows))):
      rows.append({"lesion_id": f"HAM_{118 + 7 * lesion:07d}",
                   "image_id": f"ISIC_{24306 + 13 * len(rows):07d}", "dx": dx,
                   "dx_type": HAM_DX_TYPE[dx][len(rows) % len(HAM_DX_TYPE[dx])], "age": age,
                   "sex": sex, "localization": site})
    lesion += 1
  return rows


def make_ham10000(root: str, n: int = 48, seed: int = 0, masks: bool = True,
                  size: tuple = (30, 24), overrides: dict | None = None, missing_images=(),
                  corrupt_images=(), missing_masks=(), drop_columns=()) -> list[dict]:
  """Writes a HAM10000 tree under `root`; returns its CSV rows (each with its "part" folder)."""
  rows = _apply(ham10000_rows(n, seed), overrides)
  write_csv(os.path.join(root, "HAM10000_metadata.csv"), HAM_COLUMNS, rows, drop_columns)
  for part in (1, 2):
    os.makedirs(os.path.join(root, f"HAM10000_images_part_{part}"), exist_ok=True)
  for i, row in enumerate(rows):
    row["part"] = 1 if i < n // 2 else 2
    pixels, mask = lesion_image(i, *size)
    if i not in missing_images:
      write_image(os.path.join(root, f"HAM10000_images_part_{row['part']}",
                               f"{row['image_id']}.jpg"), pixels, i in corrupt_images)
    if masks and i not in missing_masks:
      write_image(os.path.join(root, "HAM10000_segmentations_lesion_tschandl",
                               f"{row['image_id']}_segmentation.png"), mask, fmt="PNG")
  return rows


def isic2020_rows(n: int, seed: int = 0) -> list[dict]:
  """The train.csv rows of a fixture ISIC 2020 of `n` images (patients of 1-4 images)."""
  rng = np.random.default_rng(seed)
  rows, patient = [], 0
  while len(rows) < n:
    sex = "" if patient == 3 else ("female", "male")[patient % 2]
    age = "" if patient == 5 else f"{float(5 * rng.integers(4, 17)):.1f}"
    for _ in range(min(1 + patient % 4, n - len(rows))):
      i = len(rows)
      malignant = i % 4 == 1
      rows.append({
          "image_name": f"ISIC_{2637011 + 17 * i:07d}", "patient_id": f"IP_{7279968 + patient}",
          "sex": sex, "age_approx": age,
          "anatom_site_general_challenge": ISIC_SITES[i % len(ISIC_SITES)],
          "diagnosis": "melanoma" if malignant else ("nevus", "unknown")[i % 2],
          "benign_malignant": "malignant" if malignant else "benign",
          "target": str(int(malignant))})
    patient += 1
  return rows


def make_isic2020(root: str, n: int = 48, seed: int = 0, size: tuple = (32, 24),
                  overrides: dict | None = None, missing_images=(), corrupt_images=(),
                  drop_columns=()) -> list[dict]:
  """Writes an ISIC 2020 training tree under `root`; returns its train.csv rows."""
  rows = _apply(isic2020_rows(n, seed), overrides)
  write_csv(os.path.join(root, "train.csv"), ISIC_COLUMNS, rows, drop_columns)
  os.makedirs(os.path.join(root, "jpeg", "train"), exist_ok=True)
  for i, row in enumerate(rows):
    if i not in missing_images:
      write_image(os.path.join(root, "jpeg", "train", f"{row['image_name']}.jpg"),
                  lesion_image(i, *size)[0], i in corrupt_images)
  return rows


def report_text(labels: dict, sections: str = "both") -> str:
  """A MIMIC-style report whose FINDINGS / IMPRESSION mention the labels."""
  sentences = []
  for name, value in labels.items():
    if name == "No Finding":
      continue
    phrase = name.lower()
    sentences.append({"1.0": f"There is {phrase}.", "0.0": f"No {phrase}.",
                      "-1.0": f"Possible {phrase}, cannot exclude."}[value])
  findings = " ".join(sentences) or "The lungs are clear. Heart size is normal."
  impression = ("No acute cardiopulmonary process." if "No Finding" in labels
                else sentences[0] if sentences else "Stable.")
  text = ("                                 FINAL REPORT\n"
          " EXAMINATION:  CHEST (PA AND LAT)\n \n"
          " INDICATION:  ___F with cough  // eval for pneumonia\n \n"
          " TECHNIQUE:  Chest PA and lateral\n \n"
          " COMPARISON:  ___.\n \n")
  if sections in ("both", "findings"):
    text += f" FINDINGS: \n \n {findings}\n \n"
  if sections in ("both", "impression"):
    text += f" IMPRESSION: \n \n {impression}\n"
  return text


def dicom_id(rng: np.random.Generator) -> str:
  return "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(5))


def mimic_tables(n_subjects: int, seed: int = 0) -> dict:
  """Rows of the three MIMIC-CXR-JPG CSVs and the report texts of a fixture release."""
  rng = np.random.default_rng(seed)
  metadata, chexpert, split_rows, reports = [], [], [], {}
  study = 0
  for s in range(n_subjects):
    subject = str(10000032 + 1009 * s)
    split = "validate" if s % 7 == 5 else "test" if s % 7 == 6 else "train"
    for _ in range(1 + s % 3):
      study_id = str(50000000 + 4111 * study)
      labels = MIMIC_LABEL_CYCLE[study % len(MIMIC_LABEL_CYCLE)]
      chexpert.append({"subject_id": subject, "study_id": study_id,
                       **{name: labels.get(name, "") for name in CHEXPERT_LABELS}})
      reports[study_id] = report_text(labels, "impression" if study % 5 == 3 else "both")
      views = ["PA" if study % 3 else "AP"] + (["LATERAL"] if study % 2 == 0 else [])
      for view in views:
        dicom = dicom_id(rng)
        metadata.append({
            "dicom_id": dicom, "subject_id": subject, "study_id": study_id,
            "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
            "Rows": "3056", "Columns": "2544", "StudyDate": str(21800506 + study),
            "StudyTime": "213014.531", "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
            "ViewCodeSequence_CodeMeaning": "postero-anterior" if view == "PA" else
            "antero-posterior" if view == "AP" else "lateral",
            "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
        split_rows.append({"dicom_id": dicom, "study_id": study_id, "subject_id": subject,
                           "split": split})
      study += 1
  return {"metadata": metadata, "chexpert": chexpert, "split": split_rows, "reports": reports}


def make_mimic_cxr(root: str, n_subjects: int = 16, seed: int = 0, size: tuple = (20, 24),
                   overrides: dict | None = None, chexpert_overrides: dict | None = None,
                   split_overrides: dict | None = None, missing_images=(), corrupt_images=(),
                   missing_reports=(), drop_columns=()) -> dict:
  """Writes a MIMIC-CXR-JPG (+ reports) tree; `overrides` / `missing_images` /
  `corrupt_images` index metadata rows, `missing_reports` study ids. Returns `mimic_tables`."""
  tables = mimic_tables(n_subjects, seed)
  _apply(tables["metadata"], overrides)
  _apply(tables["chexpert"], chexpert_overrides)
  _apply(tables["split"], split_overrides)
  write_csv(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv"), MIMIC_METADATA_COLUMNS,
            tables["metadata"], drop_columns)
  write_csv(os.path.join(root, "mimic-cxr-2.0.0-chexpert.csv"),
            ("subject_id", "study_id") + CHEXPERT_LABELS, tables["chexpert"])
  write_csv(os.path.join(root, "mimic-cxr-2.0.0-split.csv"), MIMIC_SPLIT_COLUMNS,
            tables["split"])
  for i, row in enumerate(tables["metadata"]):
    folder = os.path.join(root, "files", f"p{row['subject_id'][:2]}", f"p{row['subject_id']}",
                          f"s{row['study_id']}")
    if i not in missing_images:
      pixels = lesion_image(i, *size)[0].mean(-1).astype(np.uint8)
      write_image(os.path.join(folder, f"{row['dicom_id']}.jpg"), pixels, i in corrupt_images)
    if row["study_id"] not in missing_reports:
      os.makedirs(os.path.dirname(folder), exist_ok=True)
      with open(folder + ".txt", "w", encoding="utf-8") as f:
        f.write(tables["reports"][row["study_id"]])
  return tables
