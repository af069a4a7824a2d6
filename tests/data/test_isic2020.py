"""isic2020 builder on generated fixture trees: exact rows, patient-grouped splits, statistics,
bad rows."""
import math
import os

import numpy as np
import pytest

import fixture_trees
from jaxmm.data import bad_rows
from jaxmm.data import builders
from jaxmm.data import isic2020
from jaxmm.data import saved_statistics

SIZE = 16
N = 48


def build(tmp, manual, **overrides):
  return builders.prepare(builders.get_builder("isic2020", data_dir=os.path.join(tmp, "data"),
                                               manual_dir=manual, image_size=SIZE, **overrides))


UPPER_CASE_JPG = 5  # its image is <image_name>.JPG, as HAM10000 accepts too


def image_path(root: str, row: dict, ext: str = ".jpg") -> str:
  return os.path.join(root, "jpeg", "train", row["image_name"] + ext)


@pytest.fixture(scope="module")
def built(tmp_path_factory, read_records):
  tmp = str(tmp_path_factory.mktemp("isic"))
  release = os.path.join(tmp, "release")
  rows = fixture_trees.make_isic2020(release, n=N)
  os.rename(image_path(release, rows[UPPER_CASE_JPG]),
            image_path(release, rows[UPPER_CASE_JPG], ".JPG"))
  builder = build(tmp, release)
  return rows, builder, read_records(builder, "image_id")


def test_rows_map_to_examples_with_ham_style_metadata_fields(built):
  rows, builder, records = built
  assert len(records) == N
  assert builder.info.features["label"].names == ["benign", "malignant"]
  for i, row in enumerate(rows):
    r = records[row["image_name"]]
    assert r["label"] == int(row["target"]) == int(row["benign_malignant"] == "malignant")
    assert r["patient_id"].decode() == row["patient_id"]
    assert r["sex"].decode() == (row["sex"] or "unknown")
    assert r["localization"].decode() == (row["anatom_site_general_challenge"] or "unknown")
    assert r["diagnosis"].decode() == row["diagnosis"]
    assert math.isnan(r["age"]) if not row["age_approx"] else r["age"] == float(row["age_approx"])
    assert fixture_trees.closest_colour(r["image"][0, 0], N) == i
  assert records["ISIC_2637028"]["label"] == 1  # row 1: every 4th image from 1 is malignant
  assert records["ISIC_2637028"]["localization"] == b"lower extremity"


def test_patients_never_cross_splits_and_malignant_in_every_split(built):
  _, builder, records = built
  by_patient = {}
  for r in records.values():
    by_patient.setdefault(r["patient_id"], set()).add(r["split"])
  assert all(len(s) == 1 for s in by_patient.values())
  for split in ("train", "validation", "test"):
    labels = [r["label"] for r in records.values() if r["split"] == split]
    assert 0 < sum(labels) < len(labels), split
  assert sum(s.num_examples for s in builder.info.splits.values()) == N


def test_saved_encoder_has_isic_sites(built):
  rows, builder, records = built
  enc = saved_statistics.read_encoder(builder.data_dir)
  assert enc.vocabularies == {"sex": ("male", "female", "unknown"),
                              "localization": isic2020.SITES}
  assert enc.dim == 1 + 3 + 7 and enc.field_names == ("age", "sex", "localization")
  train_ages = [float(r["age_approx"]) for r in rows
                if records[r["image_name"]]["split"] == "train" and r["age_approx"]]
  assert enc.age_median == float(np.median(train_ages))
  missing = sum(1 for r in rows if records[r["image_name"]]["split"] == "train"
                and not r["age_approx"])
  assert enc.num_imputed == missing
  x = enc.transform({"age": [np.nan], "sex": ["female"], "localization": ["palms/soles"]})
  assert x.shape == (1, 11)
  assert [enc.feature_names[j] for j in np.flatnonzero(x[0, 1:]) + 1] == [
      "sex=female", "localization=palms/soles"]
  assert x[0, 0] == pytest.approx((enc.age_median - enc.age_mean) / enc.age_std)


BAD = {2: {"target": "1"}, 5: {"anatom_site_general_challenge": "elbow"},
       8: {"age_approx": "about 40"}, 11: {"target": "yes"}, 14: {"patient_id": ""},
       26: {"age_approx": "4_5"}}  # float("4_5") is 45


def test_bad_rows_strict_error_and_skip_counts(tmp_path):
  release = str(tmp_path / "release")
  rows = fixture_trees.make_isic2020(release, n=N, overrides=BAD, missing_images=(17,),
                                     corrupt_images=(20,))
  open(image_path(release, rows[29]), "wb").close()  # found by the first pass
  with pytest.raises(bad_rows.BadRowsError) as error:
    build(str(tmp_path), release)
  text = str(error.value)
  for line, what in ((4, "target 1 disagrees with benign_malignant 'benign'"),
                     (7, "anatom_site_general_challenge 'elbow' is not one of"),
                     (10, "age_approx 'about 40' is not a number"),
                     (13, "target 'yes' is not 0 or 1"), (16, "patient_id is empty"),
                     (19, "not found"), (28, "age_approx '4_5' is not a number"),
                     (31, f"{rows[29]['image_name']}.jpg is empty (0 bytes)")):
    assert f"train.csv line {line}" in text and what in text, (line, what)
  builder = build(str(tmp_path), release, skip_bad_rows=True)
  info = builder.info.metadata["build"]
  assert info["skipped"]["by_kind"] == {"corrupt_image": 2, "label_mismatch": 1, "missing_id": 1,
                                        "missing_image": 1, "non_numeric_age": 2,
                                        "unknown_category": 2}
  examples = sum(s.num_examples for s in builder.info.splits.values())
  assert info["csv_rows"] == N == examples + 9


def test_missing_column_and_missing_release(tmp_path):
  release = str(tmp_path / "release")
  fixture_trees.make_isic2020(release, n=8, drop_columns=("age_approx", "target"))
  with pytest.raises(ValueError,
                     match=r"train.csv: missing column\(s\) \['age_approx', 'target'\]"):
    build(str(tmp_path), release)
  with pytest.raises(FileNotFoundError, match=r"(?s)train.csv.*jpeg/train/.*isic-archive"):
    build(str(tmp_path), str(tmp_path / "nowhere"))


def test_unfittable_metadata_fails_the_build_and_a_fixed_release_rebuilds(tmp_path):
  # Every training age blank: no median to impute. The error names the dataset, where the
  # encoder goes, the field and its column; nothing counts as prepared, so after the fix the
  # same data_dir builds (before, the records were kept and every rerun failed the same way).
  release = str(tmp_path / "release")
  blank = {i: {"age_approx": ""} for i in range(24)}
  fixture_trees.make_isic2020(release, n=24, overrides=blank)
  data_dir = os.path.join(str(tmp_path), "data", "isic2020", "px16_seed0", "1.0.0")
  with pytest.raises(ValueError) as error:
    build(str(tmp_path), release)
  assert str(error.value).startswith(
      f"isic2020/px16_seed0: cannot fit the metadata encoder ({data_dir}/metadata_encoder.json) "
      f"on the ")
  assert ("metadata field 'age': every training value is missing" in str(error.value)
          and f"column 'age_approx' of {release}/train.csv" in str(error.value))
  assert not os.path.exists(data_dir)
  fixture_trees.make_isic2020(release, n=24)
  builder = build(str(tmp_path), release)
  assert builder.data_dir == data_dir
  assert math.isfinite(saved_statistics.read_encoder(data_dir).age_median)


def test_train_ages_lost_to_bad_images_fail_the_build_before_it_is_written(tmp_path):
  # Only two training rows have an age, and their images do not decode: found when the train
  # split is decoded, still before anything counts as prepared.
  release = str(tmp_path / "release")
  rows = fixture_trees.make_isic2020(release, n=24)
  builder = builders.get_builder("isic2020", data_dir=str(tmp_path / "data"), manual_dir=release,
                                 image_size=SIZE, skip_bad_rows=True)
  entries, _ = builder.read_entries(release, bad_rows.BadRowLog("isic2020", strict=False))
  train = {e.key for e in builder.assign_splits(entries)["train"]}
  aged = [i for i, row in enumerate(rows) if row["image_name"] in train][:2]
  fixture_trees.make_isic2020(release, n=24, corrupt_images=aged, overrides={
      i: {"age_approx": ""} for i in range(24) if i not in aged})
  with pytest.raises(ValueError, match=r"isic2020/px16_seed0_skip: cannot fit the metadata "
                                       r"encoder .* on the \d+ example\(s\) of the train split: "
                                       r"metadata field 'age': every training value is missing"):
    build(str(tmp_path), release, skip_bad_rows=True)
  assert not os.path.exists(os.path.join(str(tmp_path), "data", "isic2020", "px16_seed0_skip",
                                         "1.0.0"))


def test_a_prepared_dataset_without_a_fittable_encoder_says_what_to_delete(tmp_path, monkeypatch):
  # A dataset prepared before the check above: writing its encoder names it and the remedy.
  release = str(tmp_path / "release")
  fixture_trees.make_isic2020(release, n=24, overrides={i: {"age_approx": ""} for i in range(24)})
  monkeypatch.setattr(isic2020.Isic2020, "check_metadata", lambda self, root, train: None)
  with pytest.raises(ValueError, match=r"isic2020/px16_seed0: cannot fit the metadata encoder .*"
                                       r"column 'age_approx' of train.csv; fix the release, "
                                       r"delete the prepared dataset .*px16_seed0/1.0.0 and "
                                       r"prepare it again"):
    build(str(tmp_path), release)
