"""HAM10000 clinical metadata encoding (section 5.2 of paper 000_e8883a90876d02cb.txt).

One row of metadata is (age, sex, localization, dx_type). The encoder is fitted on the
TRAINING split only and then applied unchanged to every split:

- age: missing values (NaN, None, "", b"") are imputed with the training median, then the
  column is z-scored with the training mean and (population) standard deviation of the
  imputed ages -> 1 column.
- sex: one-hot over ("male", "female", "unknown") -> 3 columns.
- localization: one-hot over the 15 HAM10000 body sites, "unknown" included -> 15 columns.
- dx_type: one-hot over ("histo", "follow_up", "consensus", "confocal") plus an extra
  "unknown" column that catches blank or unseen values -> 5 columns (the paper's 4 modalities
  + the reserved "unknown" category of section 3).

Total D = 24 columns, in the order age | sex | localization | dx_type. Empty values of a
categorical field become "unknown"; values outside the vocabulary become "unknown" too, or
raise a ValueError naming the field, the value and the valid values when `strict=True`.

Other datasets pass their own categorical fields and categories as `vocabularies` (ISIC 2020:
sex and its 7 anatomical sites, jaxmm.data.isic2020.VOCABULARIES); age is always the first
column.
"""
import dataclasses
import json
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

UNKNOWN = "unknown"
SEXES = ("male", "female", UNKNOWN)
LOCALIZATIONS = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "upper extremity", UNKNOWN)
DX_TYPES = ("histo", "follow_up", "consensus", "confocal")

# Categorical vocabularies as encoded (dx_type gains the reserved "unknown" column).
HAM10000_VOCABULARIES = {
    "sex": SEXES,
    "localization": LOCALIZATIONS,
    "dx_type": DX_TYPES + (UNKNOWN,),
}
AGE_FIELD = "age"
MAX_AGE = 150  # years; larger (or negative, infinite) ages are data errors
FIELD_NAMES = (AGE_FIELD, "sex", "localization", "dx_type")
# A number as release tables write one: ASCII digits, optional sign, decimals and exponent.
# float() alone would also take "4_5" (45) and non-ASCII digits ("４５", "٤٥").
DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
MISSING_TEXTS = ("", "nan", "none", "null")  # lower-cased, stripped: a missing value
_FORMAT_VERSION = 1


class FieldError(ValueError):
  """A metadata value or column that cannot be encoded; `field` names the record field and
  `kind`, where set, which check failed (parse_age: "non_numeric_age", "age_out_of_range")."""

  def __init__(self, field: str, message: str, kind: str | None = None):
    super().__init__(message)
    self.field = field
    self.kind = kind


def _as_text(value: Any) -> str:
  """Decodes bytes, maps None to "", strips and lower-cases a categorical value."""
  if value is None:
    return ""
  if isinstance(value, (bytes, np.bytes_)):
    value = value.decode("utf-8")
  if isinstance(value, float) and math.isnan(value):
    return ""
  return str(value).strip().lower()


def parse_age(value: Any, row: int | None = None) -> float:
  """Returns an age in years as float, NaN when missing (None, NaN, MISSING_TEXTS); FieldError
  (a ValueError) on text that is not a DECIMAL number and on numbers that are not an age
  (infinite, negative or above MAX_AGE)."""
  where = f" at row {row}" if row is not None else ""
  if value is None:
    return math.nan
  if isinstance(value, (bytes, np.bytes_)):
    value = value.decode("utf-8")
  if isinstance(value, str):
    text = value.strip()
    if text.lower() in MISSING_TEXTS:
      return math.nan
    if not DECIMAL.fullmatch(text):
      raise FieldError(AGE_FIELD, f"metadata field 'age'{where}: non-numeric value {value!r}",
                       "non_numeric_age")
    age = float(text)
  else:
    age = float(value)
  if not math.isnan(age) and not 0 <= age <= MAX_AGE:
    raise FieldError(AGE_FIELD, f"metadata field 'age'{where}: {value!r} is not an age in years "
                                f"(0 to {MAX_AGE})", "age_out_of_range")
  return age


def _columns(records: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
             field_names: Sequence[str] = FIELD_NAMES) -> dict:
  """Turns a dict of arrays or a list of row dicts into a dict field -> list of values."""
  if isinstance(records, Mapping):
    columns = {name: list(np.asarray(records[name], dtype=object).reshape(-1))
               for name in field_names if name in records}
  else:
    columns = {name: [row.get(name) for row in records] for name in field_names}
  missing = [name for name in field_names if name not in columns]
  if missing:
    raise ValueError(f"metadata records lack fields {missing}; expected {list(field_names)}")
  lengths = {len(values) for values in columns.values()}
  if len(lengths) != 1:
    raise ValueError(f"metadata fields have different lengths: "
                     f"{ {k: len(v) for k, v in columns.items()} }")
  return columns


@dataclasses.dataclass(frozen=True)
class MetadataEncoder:
  """Fitted HAM10000 metadata encoder; build it with `MetadataEncoder.fit(train_records)`.

  Attributes:
    age_median: training median age used to impute missing ages.
    age_mean, age_std: statistics of the imputed training ages used for the z-score.
    num_imputed: how many training ages were missing (and imputed) at fit time.
    vocabularies: field -> ordered category names (one column each).
    strict: raise on out-of-vocabulary categorical values instead of mapping to "unknown".
  """
  age_median: float
  age_mean: float
  age_std: float
  num_imputed: int
  vocabularies: Mapping[str, tuple] = dataclasses.field(
      default_factory=lambda: dict(HAM10000_VOCABULARIES))
  strict: bool = False

  @classmethod
  def fit(cls, records, *, strict: bool = False,
          vocabularies: Mapping[str, Sequence[str]] | None = None) -> "MetadataEncoder":
    """Fits age statistics on training `records` (dict of arrays or list of row dicts).

    `vocabularies` (default HAM10000_VOCABULARIES) names the categorical fields and their
    categories; the records must hold "age" and those fields (e.g. ISIC 2020's sites).
    """
    vocabularies = vocabularies or HAM10000_VOCABULARIES
    columns = _columns(records, (AGE_FIELD,) + tuple(vocabularies))
    ages = np.array([parse_age(v, i) for i, v in enumerate(columns[AGE_FIELD])], np.float64)
    missing = np.isnan(ages)
    if missing.all():
      raise FieldError(AGE_FIELD, f"metadata field 'age': every training value is missing "
                                  f"({len(ages)} record(s)), so there is no median to impute")
    median = float(np.median(ages[~missing]))
    imputed = np.where(missing, median, ages)
    std = float(imputed.std())
    vocabs = {k: tuple(v) for k, v in vocabularies.items()}
    encoder = cls(age_median=median, age_mean=float(imputed.mean()),
                  age_std=std if std > 0 else 1.0, num_imputed=int(missing.sum()),
                  vocabularies=vocabs, strict=strict)
    encoder._check_categories(columns)
    return encoder

  @property
  def field_names(self) -> tuple:
    """Raw record fields the encoder reads, in column order."""
    return (AGE_FIELD,) + tuple(self.vocabularies)

  @property
  def fields(self) -> list:
    """Ordered (field name, column slice) pairs; the slices tile [0, dim)."""
    out, start = [(AGE_FIELD, slice(0, 1))], 1
    for name, vocab in self.vocabularies.items():
      out.append((name, slice(start, start + len(vocab))))
      start += len(vocab)
    return out

  @property
  def dim(self) -> int:
    """Number of encoded columns D."""
    return 1 + sum(len(v) for v in self.vocabularies.values())

  @property
  def feature_names(self) -> list:
    """Column names: "age", then "field=value" for every one-hot column."""
    return [AGE_FIELD] + [f"{name}={value}" for name, vocab in self.vocabularies.items()
                          for value in vocab]

  def category_index(self, field: str, value: Any, row: int | None = None) -> int:
    """Column offset of `value` within `field`'s one-hot block (unknown handling applied)."""
    vocab = self.vocabularies[field]
    text = _as_text(value)
    if text in vocab:
      return vocab.index(text)
    if (text and self.strict) or UNKNOWN not in vocab:
      where = f" at row {row}" if row is not None else ""
      raise FieldError(field, f"metadata field {field!r}{where}: value {value!r} is not one of "
                              f"{list(vocab)}")
    return vocab.index(UNKNOWN)

  def _check_categories(self, columns: dict) -> None:
    for name in self.vocabularies:
      for row, value in enumerate(columns[name]):
        self.category_index(name, value, row)

  def encode_age(self, values: Sequence[Any]) -> np.ndarray:
    """Median-imputed, z-scored ages: float32 [N]."""
    ages = np.array([parse_age(v, i) for i, v in enumerate(values)], np.float64)
    ages = np.where(np.isnan(ages), self.age_median, ages)
    return ((ages - self.age_mean) / self.age_std).astype(np.float32)

  def transform(self, records) -> np.ndarray:
    """Encodes records (dict of arrays or list of row dicts) -> float32 [N, D]."""
    columns = _columns(records, self.field_names)
    n = len(columns[AGE_FIELD])
    out = np.zeros((n, self.dim), np.float32)
    out[:, 0] = self.encode_age(columns[AGE_FIELD])
    for name, block in self.fields[1:]:
      for row, value in enumerate(columns[name]):
        out[row, block.start + self.category_index(name, value, row)] = 1.0
    return out

  def to_json(self) -> str:
    """Serialises the fitted statistics and vocabularies (reload with `from_json`)."""
    state = dataclasses.asdict(self)
    state["vocabularies"] = {k: list(v) for k, v in self.vocabularies.items()}
    state["format_version"] = _FORMAT_VERSION
    return json.dumps(state, indent=2)

  @classmethod
  def from_json(cls, text: str) -> "MetadataEncoder":
    """Inverse of `to_json`."""
    state = json.loads(text)
    version = state.pop("format_version", _FORMAT_VERSION)
    if version != _FORMAT_VERSION:
      raise ValueError(f"metadata encoder format {version} is not {_FORMAT_VERSION}")
    state["vocabularies"] = {k: tuple(v) for k, v in state["vocabularies"].items()}
    return cls(**state)
