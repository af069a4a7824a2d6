"""Property-based tests (hypothesis): random metadata rows and report texts give either a
valid encoding or the documented error, never a silent NaN / inf or a crash of another kind."""
import math
import re

import numpy as np
from hypothesis import given, settings, strategies as st

from jaxmm.data import metadata, tokenizer

FIT_ROWS = {"age": [30.0, 45.0, None, 70.0], "sex": ["male", "female", "", "male"],
            "localization": ["back", "face", "trunk", "scalp"],
            "dx_type": ["histo", "consensus", "follow_up", "confocal"]}
ENCODER = metadata.MetadataEncoder.fit(FIT_ROWS)
STRICT = metadata.MetadataEncoder.fit(FIT_ROWS, strict=True)

ages = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10**6, 10**6), st.text(max_size=12),
    st.sampled_from(["", " 42 ", "nan", "None", "1e400", "-inf", "forty", "35.5", "4_5", "４５",
                     "١٢", "+7", ".5", "1e1"]))
category = st.one_of(st.none(), st.text(max_size=16), st.sampled_from(
    ["male", " Female ", "UNKNOWN", "back", "lower extremity", "histo", "", "Ünïcode"]),
    st.binary(max_size=8).filter(lambda b: _utf8(b)))


def _utf8(data: bytes) -> bool:
  try:
    data.decode("utf-8")
    return True
  except UnicodeDecodeError:
    return False


rows = st.lists(st.fixed_dictionaries({"age": ages, "sex": category, "localization": category,
                                        "dx_type": category}), min_size=1, max_size=6)


# Text that is a number: ASCII digits only (float() would also take "4_5" and "４５").
ASCII_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def age_is_valid(value) -> bool:
  """The documented contract of parse_age: missing -> imputed; a number of years in
  [0, MAX_AGE] (text: an ASCII decimal) -> kept; anything else -> ValueError."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return True
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if isinstance(value, str):
    text = value.strip()
    if not text or text.lower() in ("nan", "none", "null"):
      return True
    if not ASCII_NUMBER.fullmatch(text):
      return False
    value = float(text)
  return 0 <= float(value) <= metadata.MAX_AGE


@settings(max_examples=150, deadline=None)
@given(rows)
def test_metadata_rows_encode_or_raise_the_documented_error(records):
  try:
    encoded = ENCODER.transform(records)
  except ValueError as error:
    assert str(error).startswith("metadata field 'age' at row "), error
    bad = next(i for i, r in enumerate(records) if not age_is_valid(r["age"]))
    assert f"at row {bad}:" in str(error)
    return
  assert all(age_is_valid(r["age"]) for r in records)
  assert encoded.shape == (len(records), ENCODER.dim) and np.isfinite(encoded).all()
  for _, block in ENCODER.fields[1:]:
    np.testing.assert_array_equal(encoded[:, block].sum(1), 1.0)  # exactly one category


@settings(max_examples=100, deadline=None)
@given(rows)
def test_strict_encoder_names_the_field_of_an_unknown_category(records):
  try:
    STRICT.transform(records)
  except ValueError as error:
    text = str(error)
    assert text.startswith("metadata field '"), text
    field = text.split("'")[1]
    assert field in metadata.FIELD_NAMES
    if field != "age":
      assert "is not one of" in text
    return
  for record in records:
    for field, vocab in STRICT.vocabularies.items():
      value = metadata._as_text(record[field])
      assert value in vocab or not value


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=200), st.builds(
    lambda a, b, c: f"{a} FINDINGS: {b} IMPRESSION: {c}", st.text(max_size=60),
    st.text(max_size=60), st.text(max_size=60))))
def test_report_cleaning_gives_lowercase_words_only(text):
  cleaned = tokenizer.clean_report(text)
  assert cleaned == " ".join(cleaned.split())
  assert all(ch.islower() or ch.isdigit() or ch == " " for ch in cleaned)
  assert all(ch in "abcdefghijklmnopqrstuvwxyz0123456789 " for ch in cleaned)
  sections = tokenizer.report_sections(text)
  assert all(isinstance(k, str) and isinstance(v, str) for k, v in sections.items())
