"""mimic_cxr: MIMIC-CXR-JPG 2.x radiographs + MIMIC-CXR reports from a manual download (paper 001).

Expected layout of the manual folder (PhysioNet, credentialed access: MIMIC-CXR-JPG 2.0/2.1
https://physionet.org/content/mimic-cxr-jpg/ and, for the reports, mimic-cxr-reports.zip of
MIMIC-CXR 2.0 https://physionet.org/content/mimic-cxr/ unzipped into the same folder):

  mimic-cxr-2.0.0-metadata.csv   dicom_id,subject_id,study_id,...,ViewPosition,...
  mimic-cxr-2.0.0-chexpert.csv   subject_id,study_id,<the 14 CheXpert labels>
  mimic-cxr-2.0.0-split.csv      dicom_id,study_id,subject_id,split   (split="official" only)
  files/pNN/p<subject_id>/s<study_id>/<dicom_id>.jpg    (pNN: first two digits of subject_id)
  files/pNN/p<subject_id>/s<study_id>.txt               the study's report
(the three tables may stay gzipped, `.csv.gz`, as PhysioNet ships them).

One example per image whose ViewPosition is in the config's `views` (PA and AP by default;
other views are counted as filtered): the grayscale image resized to image_size (uint8
[S, S, 1]), the study's 14 CheXpert labels in configs/synthetic_cxr.CHEXPERT_LABELS order as
int32 (1 positive, 0 negative, -1 uncertain, blank -> -2 not mentioned), the report cleaned as
section 2 of paper 001 does (tokenizer.clean_report: FINDINGS + IMPRESSION, with CONCLUSION
and FINDINGS AND IMPRESSION read as the impression as MIMIC-CXR's section parser does, lower-cased,
punctuation removed; a report with neither section is cleaned whole; a report whose FINDINGS
and IMPRESSION are empty is a bad row, `empty_report`), and the ids
(`patient_id` "p<subject_id>", `study_id` "s<study_id>", `dicom_id`, `view_position`).
These mirror synthetic_cxr's features, so its model configs run unchanged. MIMIC-CXR-JPG has no
sex or age (they are in MIMIC-IV), so there are none here.

The tables are joined on study_id (chexpert) and dicom_id (split); a joined row whose
subject_id / study_id differ from the metadata row's is a bad row (`id_mismatch`), since the
labels or split would belong to another patient or study.

Splits: `split="official"` (default) uses mimic-cxr-2.0.0-split.csv (train / validate ->
validation / test), which must keep each subject in one split (the official table does; one
that does not is an error: patient leakage); `split="grouped"` makes a 64/16/20 split grouped
by subject_id and stratified by a label summary (`stratum`), and neither reads nor needs
mimic-cxr-2.0.0-split.csv. When prepared, the WordPiece vocabulary of the training reports is
written next to the records (builders.SIDE_FILE_WRITERS), as for synthetic_cxr; pretrained text
encoders bring their own tokenizer instead.
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from jaxmm.data import bad_rows
from jaxmm.data import image_files
from jaxmm.data import manual_base
from jaxmm.data import manual_dir
from jaxmm.data import release_csv
from jaxmm.data import splits
from jaxmm.data import tokenizer
from jaxmm.data.cxr_reports import CHEXPERT_LABELS, NO_FINDING, NOT_MENTIONED

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
FILES_DIR = "files"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
CHEXPERT_COLUMNS = ("subject_id", "study_id") + CHEXPERT_LABELS
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
ID_COLUMNS = ("subject_id", "study_id")  # kept from the chexpert and split rows to check joins
MAX_LEAKS_NAMED = 5  # subjects (and split.csv lines per split) named in a leakage error
OFFICIAL_SPLITS = {"train": "train", "validate": "validation", "test": "test"}
SPLIT_CHOICES = ("official", "grouped")
LABEL_VALUES = {1.0: 1, 0.0: 0, -1.0: -1}
LABEL_TEXT = re.compile(r"-?[01](\.0*)?", re.ASCII)  # 1.0, 0, -1.0, ... (not "１.0" or "1e0")
SPLIT_ENTRY = (SPLIT_CSV, "dicom_id,study_id,subject_id,split")
LAYOUT = manual_dir.Layout(
    dataset="mimic_cxr",
    required=((METADATA_CSV, "dicom_id,subject_id,study_id,...,ViewPosition,..."),
              (CHEXPERT_CSV, "subject_id,study_id,<14 CheXpert labels>"),
              SPLIT_ENTRY,
              (FILES_DIR + "/", "pNN/p<subject>/s<study>/<dicom_id>.jpg and "
                                "pNN/p<subject>/s<study>.txt reports")),
    source="https://physionet.org/content/mimic-cxr-jpg/ (credentialed) plus "
           "mimic-cxr-reports.zip of https://physionet.org/content/mimic-cxr/ unzipped into "
           "the same folder")
# split="grouped" makes its own split: split.csv is not read.
GROUPED_LAYOUT = dataclasses.replace(
    LAYOUT, required=tuple(e for e in LAYOUT.required if e != SPLIT_ENTRY))


@dataclasses.dataclass(eq=False)
class MimicCxrConfig(manual_base.ManualConfig):
  """ManualConfig plus `split` ("official" | "grouped") and the kept `views` (ViewPosition)."""
  split: str = "official"
  views: tuple = ("PA", "AP")

  def __post_init__(self):
    if self.split not in SPLIT_CHOICES:
      raise ValueError(f"mimic_cxr split {self.split!r} is not one of {list(SPLIT_CHOICES)}")
    if isinstance(self.views, str) or not self.views:
      raise ValueError(f"mimic_cxr views must be a non-empty tuple such as ('PA', 'AP'), "
                       f"got {self.views!r}")
    self.views = tuple(str(v).strip().upper() for v in self.views)

  def name_parts(self) -> list[str]:
    views = "_".join(v.replace(" ", "") for v in self.views)
    return super().name_parts() + [self.split, views]


def study_folder(root: str, subject: str, study: str) -> str:
  """files/pNN/p<subject>/s<study> of the release (NN: the subject id's first two digits)."""
  return os.path.join(root, FILES_DIR, f"p{subject[:2]}", f"p{subject}", f"s{study}")


def parse_labels(fields: dict) -> np.ndarray:
  """int32 [14] in CHEXPERT_LABELS order: 1.0 / 0.0 / -1.0 as is, blank -> -2."""
  out = np.full(len(CHEXPERT_LABELS), NOT_MENTIONED, np.int32)
  for k, name in enumerate(CHEXPERT_LABELS):
    text = fields[name]
    if not text or text.lower() == "nan":
      continue
    try:
      if not LABEL_TEXT.fullmatch(text):
        raise ValueError(text)
      out[k] = LABEL_VALUES[float(text)]
    except (ValueError, KeyError):
      raise bad_rows.BadInput("unknown_category", f"{name} value {text!r} is not 1.0, 0.0, "
                                                  f"-1.0 or blank") from None
  return out


def read_keyed_table(path: str, columns: tuple, key: str, parse) -> dict:
  """{row[key]: (line, {id column: text}, parse(fields) or the BadInput it raised)}; a repeated
  key is bad. The ids (subject_id, study_id) are kept so the join can check them (joined)."""
  table = {}
  for row in release_csv.read_rows(path, columns):
    value = row.fields[key]
    try:
      if row.problem:  # reported on the metadata row that joins it: a malformed join, even
        # when the cause is a stray quote in this table (its message says so; stray_quote rows
        # are lines of the file they are reported in)
        raise bad_rows.BadInput("malformed_row", row.problem)
      parsed = parse(row.fields)
    except bad_rows.BadInput as problem:
      parsed = problem
    if value in table:
      parsed = bad_rows.BadInput("duplicate_id", f"{key} {value} is on lines "
                                                 f"{table[value][0]} and {row.line}")
    ids = {c: row.fields.get(c, "") for c in ID_COLUMNS}
    table[value] = (row.line, ids, parsed)
  return table


def parse_split(fields: dict) -> str:
  """The official split name mapped to train / validation / test."""
  if fields["split"] not in OFFICIAL_SPLITS:
    raise bad_rows.BadInput("unknown_category", f"split {fields['split']!r} is not one of "
                                                f"{list(OFFICIAL_SPLITS)}")
  return OFFICIAL_SPLITS[fields["split"]]


def joined(table: dict, key: str, file: str, kind: str, what: str, ids: dict):
  """(line, parsed value) of `key` in a keyed table whose row must carry the metadata row's
  `ids` ({id column: text}); BadInput naming `file` and its line otherwise (`kind` when the key
  has no row, "id_mismatch" when the ids disagree: the tables would be joined wrongly)."""
  if key not in table:
    raise bad_rows.BadInput(kind, f"{what} has no row in {file}")
  line, row_ids, value = table[key]
  if isinstance(value, bad_rows.BadInput):
    raise bad_rows.BadInput(value.kind, f"{file} line {line}: {value}")
  wrong = [f"{column} {row_ids[column]!r}" for column in ids if row_ids[column] != ids[column]]
  if wrong:
    expected = ", ".join(f"{column} {ids[column]!r}" for column in ids)
    raise bad_rows.BadInput("id_mismatch", f"{file} line {line} ({what}) has {', '.join(wrong)}"
                                           f" but {METADATA_CSV} has {expected}")
  return line, value


def digits(field: str, text: str) -> str:
  """A numeric id as text, ASCII digits only (it names folders); BadInput("missing_id")
  otherwise."""
  if not (text.isascii() and text.isdigit()):
    raise bad_rows.BadInput("missing_id", f"{field} {text!r} is not a number")
  return text


def parse_row(root: str, fields: dict, labels: dict, split_table: dict | None) -> dict:
  """Validated ids, labels, split and file paths of one metadata row; raises BadInput."""
  dicom = manual_base.nonempty("dicom_id", fields["dicom_id"])
  subject = digits("subject_id", fields["subject_id"])
  study = digits("study_id", fields["study_id"])
  folder = study_folder(root, subject, study)
  out = {
      "dicom_id": dicom, "subject_id": subject, "study_id": study,
      "view_position": fields["ViewPosition"].upper(),
      "label": joined(labels, study, CHEXPERT_CSV, "no_labels", f"study_id {study}",
                      {"subject_id": subject})[1],
      "split": None, "split_line": None,
      "image_path": os.path.join(folder, f"{dicom}.jpg"),
      "report_path": folder + ".txt",
  }
  if split_table is not None:
    out["split_line"], out["split"] = joined(split_table, dicom, SPLIT_CSV, "no_split",
                                             f"dicom_id {dicom}",
                                             {"subject_id": subject, "study_id": study})
  manual_base.existing_file(out["image_path"], "image")
  manual_base.existing_file(out["report_path"], "report", empty_kind="empty_report")
  return out


def stratum(labels: np.ndarray) -> np.ndarray:
  """Split stratum per image from its labels int32 [N, 14]: 0 for No Finding, else 1 + index
  of its rarest positive label (rarity measured on `labels`), else 14 (no positive)."""
  positive = labels == 1
  rates = positive.mean(0) if len(labels) else np.zeros(labels.shape[1])
  out = np.full(len(labels), len(CHEXPERT_LABELS), np.int64)
  for i, row in enumerate(positive):
    if row[NO_FINDING]:
      out[i] = 0
    elif row.any():
      hits = np.flatnonzero(row)
      out[i] = 1 + hits[np.argmin(rates[hits])]
  return out


def read_report(path: str) -> str:
  """The cleaned report text; BadInput when unreadable or empty after cleaning (naming the
  empty sections)."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise bad_rows.BadInput("corrupt_report", f"cannot read report file {path}: {e}") from None
  cleaned = tokenizer.clean_report(text)
  if not cleaned:
    raise bad_rows.BadInput("empty_report", f"report file {path} {why_empty(text)}")
  return cleaned


def why_empty(text: str) -> str:
  """Why `text` cleans to nothing: no text at all, or which kept sections are empty and
  which other sections (not kept) hold its text."""
  sections = tokenizer.report_sections(text)
  empty = [name for name in tokenizer.KEPT_SECTIONS if name in sections]
  if not empty:
    return "has no text"
  others = [name or "(text before the first heading)" for name, body in sections.items()
            if body.strip() and name not in tokenizer.KEPT_SECTIONS]
  return (f"has no text in its {' and '.join(empty)} section(s), the ones kept (paper 001)"
          + (f"; its text is in {', '.join(others)} only" if others else ""))


def listed(items: list, sep: str = ", ") -> str:
  """'a, b, c' of the first MAX_LEAKS_NAMED items, then ' and N more'."""
  more = len(items) - MAX_LEAKS_NAMED
  return sep.join(map(str, items[:MAX_LEAKS_NAMED])) + (f" and {more} more" if more > 0 else "")


def check_patient_disjoint(entries: list) -> None:
  """ValueError when the official split puts one subject's images in more than one split:
  that is patient leakage (a model tested on a patient it was trained on), and the official
  MIMIC-CXR-JPG split is patient-disjoint, so such a split table is not the official one."""
  lines = {}  # subject_id -> split -> split.csv lines of its kept images
  for entry in entries:
    by_split = lines.setdefault(entry.fields["subject_id"], {})
    by_split.setdefault(entry.fields["split"], []).append(entry.fields["split_line"])
  leaks = [(subject, by_split) for subject, by_split in lines.items() if len(by_split) > 1]
  if not leaks:
    return
  named = [f"subject_id {subject} in " + " and ".join(
      f"{split} ({'line' if len(at) == 1 else 'lines'} {listed(sorted(at))})"
      for split, at in sorted(by_split.items())) for subject, by_split in leaks]
  raise ValueError(
      f"mimic_cxr: {SPLIT_CSV} puts the images of {len(leaks)} subject(s) in more than one "
      f"split, which leaks patients between splits (the official MIMIC-CXR-JPG split is "
      f"patient-disjoint): {listed(named, '; ')}. Use the official {SPLIT_CSV}, or build with "
      f"split='grouped' (--config.data.builder_overrides.split=grouped), which keeps each "
      f"subject in one split.")


class MimicCxr(manual_base.ManualBuilder):
  """MIMIC-CXR-JPG frontal radiographs + cleaned reports + 14 CheXpert labels."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "Reports are split into sections only at known MIMIC-CXR headings "
               "(tokenizer.SECTION_HEADINGS): an upper-case word before a colon inside FINDINGS "
               "or IMPRESSION (\"Left PICC: ...\") no longer drops the text after it.",
      "1.2.0": "CONCLUSION(S), FINDINGS AND IMPRESSION and FINDINGS/IMPRESSION sections are "
               "kept as the impression (tokenizer.SECTION_ALIASES; their text was dropped), and "
               "a CheXpert label must read 1, 0 or -1 (optionally .0) in ASCII.",
  }
  BUILDER_CONFIGS = [
      MimicCxrConfig(name="default", image_size=224,
                     description="224 px (paper 001), PA + AP, official split, strict"),
      MimicCxrConfig(name="grouped", image_size=224, split="grouped",
                     description="224 px, PA + AP, 64/16/20 split grouped by subject, strict"),
  ]
  DEFAULT_CONFIG_NAME = "default"
  LAYOUT = LAYOUT
  CSV_FILE = METADATA_CSV
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT.instructions()

  def layout(self):
    return GROUPED_LAYOUT if self.builder_config.split == "grouped" else LAYOUT

  def read_entries(self, root, log):
    cfg = self.builder_config
    labels = read_keyed_table(os.path.join(root, CHEXPERT_CSV), CHEXPERT_COLUMNS, "study_id",
                              parse_labels)
    split_table = None
    if cfg.split == "official":
      split_table = read_keyed_table(os.path.join(root, SPLIT_CSV), SPLIT_COLUMNS, "dicom_id",
                                     parse_split)
    found, seen, rows, filtered = [], {}, 0, 0
    for row in release_csv.read_rows(os.path.join(root, METADATA_CSV), METADATA_COLUMNS):
      rows += 1
      key = row.fields.get("dicom_id", "")
      if manual_base.log_table_problem(log, METADATA_CSV, row, key):
        continue
      if row.fields["ViewPosition"].upper() not in cfg.views:
        filtered += 1
        continue
      try:
        values = parse_row(root, row.fields, labels, split_table)
        manual_base.first_seen(seen, values["dicom_id"], row.line, "dicom_id")
      except bad_rows.BadInput as problem:
        log.add(METADATA_CSV, row.line, key, problem)
        continue
      found.append((row.line, values))
    strata = splits.merge_rare_strata(
        stratum(np.array([v["label"] for _, v in found]).reshape(-1, len(CHEXPERT_LABELS))),
        min_count=10)
    entries = [manual_base.Entry(key=v["dicom_id"], line=line, group=v["subject_id"],
                                 stratum=int(s), fields=v) for (line, v), s in zip(found, strata)]
    return entries, {"csv_rows": rows, "filtered": {f"ViewPosition not in {list(cfg.views)}":
                                                    filtered}, "split": cfg.split}

  def assign_splits(self, entries):
    if self.builder_config.split == "grouped":
      return super().assign_splits(entries)
    check_patient_disjoint(entries)
    parts = {name: [] for name in splits.SPLIT_NAMES}
    for entry in entries:
      parts[entry.fields["split"]].append(entry)
    return parts

  def make_example(self, root, entry):
    del root  # the entry holds absolute paths
    values = entry.fields
    return {
        "image": image_files.load_image(values["image_path"], self.builder_config.image_size,
                                        "L"),
        "label": values["label"],
        "report": read_report(values["report_path"]),
        "patient_id": f"p{values['subject_id']}",
        "study_id": f"s{values['study_id']}",
        "dicom_id": values["dicom_id"],
        "view_position": values["view_position"],
    }

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": manual_base.image_feature(self.builder_config.image_size, 1),
            "label": tfds.features.Tensor(shape=(len(CHEXPERT_LABELS),), dtype=np.int32),
            "report": text, "patient_id": text, "study_id": text, "dicom_id": text,
            "view_position": text,
        }),
        supervised_keys=("image", "label"),
        homepage="https://physionet.org/content/mimic-cxr-jpg/",
        metadata=tfds.core.MetadataDict(),
    )
