"""What the builders of manually downloaded releases share: config, layout check, bad rows, splits.

A builder reads its release in two passes. `read_entries` walks the CSV tables (text checks,
and a cheap os.stat of every file: missing or empty files) and returns one `Entry` per example
with the counts of the build; splits are assigned on the entries; then `make_example` decodes
pixels and text entry by entry while each split is written, so even MIMIC-CXR's 377k images
never sit in memory. A problem found in either pass goes through `bad_rows.BadRowLog`: a
`skip_bad_rows=True` build leaves the row out and counts it; a strict build stops with every
bad row of the pass (CSV file and line, the first bad_rows.MAX_IN_ERROR listed, then a count):
after the first pass, or, for files that only fail to decode, once the second pass has read
every file (so one build finds them all; a split left empty stops it early). Either way the
build fails inside tfds' temporary folder, so nothing counts as prepared.

A builder with metadata (META_VOCABULARIES) checks that the metadata encoder (saved_statistics)
can be fitted on its train split (e.g. not every training age is blank) before decoding, and
again on the examples kept once the train split is decoded, before it is written; such a
release fails to build instead of leaving a prepared dataset that every later run refuses.

`info.metadata["build"]` (saved as metadata.json next to the records) records the build:
`csv_file`, `csv_rows`, `filtered` ({reason: rows left out by design, e.g. a view filter}),
`skipped` (bad_rows summary) and builder-specific facts; always
  csv_rows == sum of split sizes + skipped["count"] + sum(filtered.values()).
Subclasses define `LAYOUT`, `CSV_FILE`, `MANUAL_DOWNLOAD_INSTRUCTIONS`, `_info`,
`read_entries` and `make_example`, and may override `assign_splits`.
"""
import collections
import dataclasses
import os
from typing import ClassVar, Iterable

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from jaxmm.data import bad_rows
from jaxmm.data import manual_dir as manual_dir_lib
from jaxmm.data import metadata
from jaxmm.data import saved_statistics
from jaxmm.data import splits

SPLIT_FRACTIONS = (0.64, 0.16, 0.20)


@dataclasses.dataclass(eq=False)
class ManualConfig(tfds.core.BuilderConfig):
  """Build options of a manual release; `name` must identify these values.

  Attributes:
    image_size: images (and masks) are stored resized to image_size x image_size.
    skip_bad_rows: leave bad rows out and count them (True) or stop with an error (False).
    seed: seed of the grouped stratified split.
  """
  image_size: int = 224
  skip_bad_rows: bool = False
  seed: int = 0

  def name_parts(self) -> list[str]:
    """Pieces of a custom config's name, one per field value."""
    return [f"px{self.image_size}", f"seed{self.seed}"] + (["skip"] if self.skip_bad_rows else [])

  @classmethod
  def custom(cls, **values) -> "ManualConfig":
    """A config whose name encodes its values (so builds never collide on disk)."""
    name = "_".join(cls(name="custom", **values).name_parts())
    return cls(name=name, description=f"custom build: {values}", **values)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One example found by the first pass: its key, CSV line, split group and stratum."""
  key: str
  line: int
  group: str
  stratum: int
  fields: dict


def image_feature(size: int, channels: int) -> tfds.features.Tensor:
  """uint8 [size, size, channels] stored zlib-compressed (no TensorFlow needed)."""
  return tfds.features.Tensor(shape=(size, size, channels), dtype=np.uint8, encoding="zlib")


def category(field: str, value: str, vocabulary: tuple, blank: str | None = "unknown") -> str:
  """Lower-cased `value` from `vocabulary`; blank -> `blank` (None: blank is an error too)."""
  text = value.strip().lower()
  if not text and blank is not None:
    return blank
  if text not in vocabulary:
    raise bad_rows.BadInput("unknown_category",
                            f"{field} {value!r} is not one of {list(vocabulary)}")
  return text


def build_summary(name: str, config: str, info) -> str:
  """One line: CSV rows -> examples per split, skipped and filtered rows by reason."""
  build = info.metadata["build"]
  sizes = {split: info.splits[split].num_examples for split in info.splits}
  skipped = build["skipped"]
  return (f"{name}/{config}: {build['csv_rows']} rows of {build['csv_file']} -> "
          f"{sum(sizes.values())} examples {sizes}; {skipped['count']} bad rows skipped "
          f"{skipped['by_kind']}; filtered out {build['filtered']}")


class ManualBuilder(tfds.core.GeneratorBasedBuilder):
  """A release read from `dl_manager.manual_dir` (array_record, no TensorFlow needed)."""

  LAYOUT: ClassVar[manual_dir_lib.Layout]
  CSV_FILE: ClassVar[str]
  # Vocabularies of the metadata encoder fitted on the train split (None: no metadata).
  META_VOCABULARIES: ClassVar[dict | None] = None
  # The CSV column of each metadata field whose column has another name (errors name it).
  META_COLUMNS: ClassVar[dict] = {}

  def __init__(self, *, manual_dir: str | None = None, file_format: str = "array_record",
               **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    self.manual_dir = manual_dir

  def read_entries(self, root: str, log: bad_rows.BadRowLog) -> tuple[list[Entry], dict]:
    """First pass: valid entries in CSV order and build facts (`csv_rows`, `filtered`, ...)."""
    raise NotImplementedError

  def make_example(self, root: str, entry: Entry) -> dict:
    """Second pass: the features of one entry; raises bad_rows.BadInput on a bad file."""
    raise NotImplementedError

  def assign_splits(self, entries: list[Entry]) -> dict[str, list[Entry]]:
    """64/16/20 split grouped by `Entry.group`, stratified by `Entry.stratum`."""
    groups = [e.group for e in entries]
    try:
      parts = splits.grouped_stratified_split([e.stratum for e in entries], groups,
                                              SPLIT_FRACTIONS, self.builder_config.seed)
    except ValueError as e:
      raise ValueError(f"{self.name}: cannot split {len(entries)} examples of "
                       f"{len(set(groups))} groups into grouped stratified {SPLIT_FRACTIONS} "
                       f"splits: {e}") from None
    return {name: [entries[i] for i in idx] for name, idx in parts.items()}

  def layout(self) -> manual_dir_lib.Layout:
    """The files the builder's config reads (LAYOUT, unless a config needs fewer)."""
    return self.LAYOUT

  def checked_root(self, dl_manager) -> str:
    """The manual folder, with every required file of `layout()` present."""
    try:
      root = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # tfds: the folder is missing or empty
      raise FileNotFoundError(f"{self.name}: {e}") from None
    except NotADirectoryError as e:  # tfds lists the folder's files: it is a file
      if e.filename:
        manual_dir_lib.check(os.fspath(e.filename), self.layout())
      raise
    manual_dir_lib.check(root, self.layout())
    return root

  def _split_generators(self, dl_manager):
    root = self.checked_root(dl_manager)
    log = bad_rows.BadRowLog(self.name, strict=not self.builder_config.skip_bad_rows)
    entries, build = self.read_entries(root, log)
    log.check(nothing_left="" if entries else os.path.join(root, self.CSV_FILE))
    if not entries:
      raise ValueError(f"{self.name}: no usable rows in {os.path.join(root, self.CSV_FILE)}: "
                       f"{unusable_note(build, log.rows)}.\nIs the release laid out as "
                       f"expected?\n{self.layout().instructions()}")
    parts = self.assign_splits(entries)
    empty = [name for name, part in parts.items() if not part]
    if empty:
      raise ValueError(f"{self.name}: split(s) {empty} would be empty (sizes "
                       f"{ {k: len(v) for k, v in parts.items()} } from {len(entries)} usable "
                       f"rows of {os.path.join(root, self.CSV_FILE)}"
                       f"{'; ' + skipped_note(log.rows) if log.rows else ''})")
    # Fails fast, before any file is decoded: leaving rows out (bad files) cannot fix it.
    self.check_metadata(root, parts["train"])
    self.info.metadata["build"] = {"csv_file": self.CSV_FILE, "filtered": {}, **build,
                                   "skipped": log.summary()}
    self._splits_left = len(parts)  # a strict build reports its bad files after the last
    return {name: self._generate_examples(root, name, part, log) for name, part in parts.items()}

  def _generate_examples(self, root: str, split: str, entries: list[Entry],
                         log: bad_rows.BadRowLog):
    """(key, example) of each entry of `split`; a bad file is logged and left out (a strict
    build fails once every split is read, see `_finish_split`).

    Errors are raised here, before tfds finalises the split (which would fail with a bare
    AssertionError on an empty one) and while the build is still in tfds' temporary folder,
    so no half-written dataset counts as prepared.
    """
    kept, skipped = [], []
    for entry in entries:
      try:
        example = self.make_example(root, entry)
      except bad_rows.BadInput as problem:
        log.add(self.CSV_FILE, entry.line, entry.key, problem)
        skipped.append(log.rows[-1])
        if log.strict and len(log.rows) <= bad_rows.MAX_LOGGED:
          logging.warning("%s: bad row %s; the build reads every file, then fails listing "
                          "them all", self.name, log.rows[-1].describe())
        self.info.metadata["build"] = {**self.info.metadata["build"], "skipped": log.summary()}
        continue
      kept.append(entry)
      yield entry.key, example
    self._finish_split(root, split, entries, kept, skipped, log)

  def _finish_split(self, root: str, split: str, entries: list[Entry], kept: list[Entry],
                    skipped: list[bad_rows.BadRow], log: bad_rows.BadRowLog) -> None:
    """Raises, once `split` is read, when it is empty (a strict build: BadRowsError with the
    bad rows found so far), when the metadata encoder cannot be fitted on the train split, or
    (a strict build) after the last split when any file was bad."""
    if not kept:
      log.check(nothing_left=f"split '{split}'")
      raise ValueError(f"{self.name}: split(s) ['{split}'] would be empty: all its "
                       f"{len(entries)} rows of {os.path.join(root, self.CSV_FILE)} were "
                       f"skipped as bad: {skipped_note(skipped)}; fix those files")
    if split == "train" and not (log.strict and log.rows):  # else bad rows first: they fail it
      self.check_metadata(root, kept)
    self._splits_left -= 1
    if not self._splits_left:
      log.check()

  def check_metadata(self, root: str, train: list[Entry]) -> None:
    """ValueError naming the dataset, where the encoder would be saved, and the field and CSV
    column, when the metadata encoder cannot be fitted on the `train` entries (the examples of
    the train split, whose records saved_statistics fits it on once they are written)."""
    if self.META_VOCABULARIES is None:
      return
    fields = (metadata.AGE_FIELD,) + tuple(self.META_VOCABULARIES)
    try:
      metadata.MetadataEncoder.fit({f: [e.fields[f] for e in train] for f in fields},
                                   vocabularies=self.META_VOCABULARIES, strict=True)
    except metadata.FieldError as error:
      data_dir = os.path.join(os.fspath(self.data_dir_root), self.info.full_name)
      raise ValueError(saved_statistics.fit_error_message(
          self, error, len(train), data_dir, os.path.join(root, self.CSV_FILE),
          "fix the release and build again (nothing was saved)")) from None

  def _post_download_and_prepare_hook(self) -> None:
    print(build_summary(self.name, self.builder_config.name, self.info), flush=True)


def unusable_note(build: dict, rows: list[bad_rows.BadRow]) -> str:
  """Why a table gave no usable rows: its row count, then its bad rows skipped and the rows
  filtered out by design, if any."""
  notes = [f"it has {build['csv_rows']} data row(s)"]
  if rows:
    notes.append(skipped_note(rows))
  filtered = {reason: count for reason, count in build.get("filtered", {}).items() if count}
  if filtered:
    notes.append(f"filtered out {filtered}")
  return "; ".join(notes)


def skipped_note(rows: list[bad_rows.BadRow]) -> str:
  """"N bad row(s) skipped {kind: count}, e.g. <the first>": why a split of a skip_bad_rows
  build can be empty."""
  kinds = dict(sorted(collections.Counter(r.kind for r in rows).items()))
  return f"{len(rows)} bad row(s) skipped {kinds}, e.g. {rows[0].describe()}"


def log_table_problem(log: bad_rows.BadRowLog, file: str, row, key: str = "") -> bool:
  """Records a malformed CSV row (wrong field count, or lost to a stray quote: `row.kind`);
  True if it was bad."""
  if row.problem is None:
    return False
  log.add(file, row.line, key, bad_rows.BadInput(row.kind, row.problem))
  return True


def first_seen(seen: dict, key: str, line: int, what: str) -> None:
  """Registers `key` at `line`; BadInput("duplicate_id") if it was already seen."""
  if key in seen:
    raise bad_rows.BadInput("duplicate_id", f"{what} {key} repeats line {seen[key]}")
  seen[key] = line


def existing_file(path: str, what: str, empty_kind: str | None = None) -> str:
  """`path`, checked cheaply (one os.stat) in the first pass so that missing and empty files
  are reported together with the other bad rows; BadInput "missing_<what>" when it does not
  exist, `empty_kind` (default "corrupt_<what>") when it is empty (0 bytes)."""
  try:
    size = os.stat(path).st_size
  except OSError:
    raise bad_rows.BadInput(f"missing_{what}", f"{what} file {path} not found") from None
  if size == 0:
    raise bad_rows.BadInput(empty_kind or f"corrupt_{what}",
                            f"{what} file {path} is empty (0 bytes)")
  return path


def jpeg_index(folders: Iterable[str]) -> dict[str, str]:
  """File name without extension -> path of each JPEG (".jpg" in any case, as released) in
  `folders`; a name found twice keeps the first folder's file."""
  index = {}
  for folder in folders:
    for name in sorted(os.listdir(folder)):
      stem, ext = os.path.splitext(name)
      if ext.lower() == ".jpg":
        index.setdefault(stem, os.path.join(folder, name))
  return index


def nonempty(field: str, value: str) -> str:
  """`value`, or BadInput("missing_id") when the id field is blank."""
  if not value:
    raise bad_rows.BadInput("missing_id", f"{field} is empty")
  return value


def parse_age(field: str, text: str) -> float:
  """Age in years (NaN when blank); BadInput "non_numeric_age" for text that is not an ASCII
  decimal number (metadata.DECIMAL: "4_5" and "４５" are not), "age_out_of_range" for a
  number that is not an age (infinite, negative, above MAX_AGE)."""
  try:
    return metadata.parse_age(text)
  except metadata.FieldError as e:
    if e.kind == "non_numeric_age":
      raise bad_rows.BadInput(e.kind, f"{field} {text!r} is not a number") from None
    raise bad_rows.BadInput(e.kind, f"{field} {text!r} is not an age in years "
                                    f"(0 to {metadata.MAX_AGE})") from None
