"""Metadata encoder: hand-computed z-scores and one-hots, unknown handling, JSON round trip."""
import math

import numpy as np
import pytest

from jaxmm.data import metadata

RECORDS = {
    "age": np.array([30.0, 50.0, np.nan, 70.0], np.float32),
    "sex": np.array(["male", "female", "", "MALE"], dtype=object),
    "localization": np.array(["back", "face", "elbow", None], dtype=object),
    "dx_type": np.array([b"histo", b"consensus", b"", b"telepathy"], dtype=object),
}


def test_dimensions_and_fields_tile_all_columns():
  enc = metadata.MetadataEncoder.fit(RECORDS)
  assert enc.dim == 1 + 3 + 15 + 5 == 24
  covered = np.zeros(enc.dim, int)
  for name, block in enc.fields:
    covered[block] += 1
    assert all(n == "age" or n.startswith(name + "=") for n in enc.feature_names[block])
  assert (covered == 1).all()
  assert [n for n, _ in enc.fields] == ["age", "sex", "localization", "dx_type"]
  assert enc.field_names == ("age", "sex", "localization", "dx_type")
  assert len(enc.feature_names) == enc.dim
  assert enc.feature_names[:4] == ["age", "sex=male", "sex=female", "sex=unknown"]
  assert enc.feature_names[-1] == "dx_type=unknown"


def test_age_is_median_imputed_then_z_scored_by_hand():
  enc = metadata.MetadataEncoder.fit(RECORDS)
  # median of (30, 50, 70) = 50 -> imputed (30, 50, 50, 70): mean 50, population std sqrt(200)
  assert enc.age_median == 50.0 and enc.num_imputed == 1
  assert enc.age_mean == pytest.approx(50.0)
  assert enc.age_std == pytest.approx(math.sqrt(200.0))
  x = enc.transform(RECORDS)
  np.testing.assert_allclose(x[:, 0], [-20 / math.sqrt(200), 0, 0, 20 / math.sqrt(200)],
                             rtol=1e-6)
  assert x.dtype == np.float32 and x.shape == (4, 24)


def test_one_hot_columns_and_unknown_mapping():
  enc = metadata.MetadataEncoder.fit(RECORDS)
  x = enc.transform(RECORDS)
  names = enc.feature_names
  hot = [[names[j] for j in np.flatnonzero(row[1:]) + 1] for row in x]
  assert hot[0] == ["sex=male", "localization=back", "dx_type=histo"]
  assert hot[1] == ["sex=female", "localization=face", "dx_type=consensus"]
  # Empty -> unknown; out-of-vocabulary -> unknown; case is normalised.
  assert hot[2] == ["sex=unknown", "localization=unknown", "dx_type=unknown"]
  assert hot[3] == ["sex=male", "localization=unknown", "dx_type=unknown"]
  for _, block in enc.fields[1:]:
    np.testing.assert_array_equal(x[:, block].sum(1), 1.0)


def test_strict_rejects_out_of_vocabulary_but_maps_empty_to_unknown():
  with pytest.raises(ValueError, match=r"'localization'.*'elbow'.*'abdomen'"):
    metadata.MetadataEncoder.fit(RECORDS, strict=True)
  clean = {**RECORDS, "localization": np.array(["back", "face", "", None], dtype=object),
           "dx_type": np.array(["histo", "consensus", "", "confocal"], dtype=object)}
  enc = metadata.MetadataEncoder.fit(clean, strict=True)
  x = enc.transform(clean)
  assert x[2, enc.feature_names.index("localization=unknown")] == 1
  assert x[2, enc.feature_names.index("dx_type=unknown")] == 1
  with pytest.raises(ValueError, match=r"'dx_type'.*'telepathy'.*histo"):
    enc.transform({**clean, "dx_type": np.array(["telepathy"] * 4, dtype=object)})


def test_non_numeric_age_names_value_and_row():
  bad = {**RECORDS, "age": np.array(["30", "fifty", "", None], dtype=object)}
  with pytest.raises(ValueError, match=r"row 1.*'fifty'"):
    metadata.MetadataEncoder.fit(bad)
  ok = {**RECORDS, "age": np.array(["30", b"50", "", None], dtype=object)}
  enc = metadata.MetadataEncoder.fit(ok)
  assert enc.num_imputed == 2 and enc.age_median == 40.0


def test_age_text_must_be_an_ascii_decimal_number():
  # float() would read "4_5" as 45 and "４５" / "٤٥" (non-ASCII digits) as 45.
  for text in ("4_5", "４５", "٤٥", "45,", "0x10", "inf"):
    with pytest.raises(metadata.FieldError, match=r"metadata field 'age' at row 3: non-numeric "
                                                  r"value") as error:
      metadata.parse_age(text, 3)
    assert error.value.field == "age"
  for text, age in (("45", 45.0), (" 45.0 ", 45.0), ("+7", 7.0), (".5", 0.5), ("1e1", 10.0)):
    assert metadata.parse_age(text) == age
  for text in ("", " ", "nan", "NaN", "None", "null", b""):
    assert math.isnan(metadata.parse_age(text))
  with pytest.raises(metadata.FieldError, match=r"'1e3' is not an age in years"):
    metadata.parse_age("1e3")


def test_every_training_age_missing_names_the_field():
  with pytest.raises(metadata.FieldError, match=r"metadata field 'age': every training value is "
                                                r"missing \(4 record\(s\)\)") as error:
    metadata.MetadataEncoder.fit({**RECORDS, "age": ["", None, "nan", np.nan]})
  assert error.value.field == "age"


def test_list_of_dicts_equals_dict_of_arrays():
  enc = metadata.MetadataEncoder.fit(RECORDS)
  rows = [{k: v[i] for k, v in RECORDS.items()} for i in range(4)]
  np.testing.assert_array_equal(enc.transform(rows), enc.transform(RECORDS))
  assert metadata.MetadataEncoder.fit(rows) == enc


def test_json_round_trip_reuses_training_statistics():
  enc = metadata.MetadataEncoder.fit(RECORDS)
  again = metadata.MetadataEncoder.from_json(enc.to_json())
  assert again == enc
  test_rows = {"age": [np.nan, 90.0], "sex": ["female", "unknown"],
               "localization": ["scalp", "trunk"], "dx_type": ["follow_up", "confocal"]}
  np.testing.assert_array_equal(again.transform(test_rows), enc.transform(test_rows))
  # Missing test ages use the TRAIN median (50), i.e. z = 0.
  assert again.transform(test_rows)[0, 0] == pytest.approx(0.0)


def test_missing_field_is_reported():
  with pytest.raises(ValueError, match="dx_type"):
    metadata.MetadataEncoder.fit({k: v for k, v in RECORDS.items() if k != "dx_type"})
