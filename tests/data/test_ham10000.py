"""ham10000 builder on generated fixture trees: exact rows, masks, splits, statistics, bad rows."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

import fixture_trees
from jaxmm.data import bad_rows
from jaxmm.data import builders
from jaxmm.data import metadata
from jaxmm.data import pipeline
from jaxmm.data import saved_statistics
from jaxmm.data.synthetic_derm import CLASS_NAMES

SIZE = 16
N = 48


def build(tmp, manual, **overrides):
  return builders.prepare(builders.get_builder("ham10000", data_dir=os.path.join(tmp, "data"),
                                               manual_dir=manual, image_size=SIZE, **overrides))


EMPTY_MASK_ROW = 40  # its mask file is all zeros: an image with no lesion drawn


def mask_path(root: str, row: dict) -> str:
  return os.path.join(root, "HAM10000_segmentations_lesion_tschandl",
                      f"{row['image_id']}_segmentation.png")


def image_path(root: str, row: dict) -> str:
  return os.path.join(root, f"HAM10000_images_part_{row['part']}", f"{row['image_id']}.jpg")


@pytest.fixture(scope="module")
def built(tmp_path_factory, read_records):
  tmp = str(tmp_path_factory.mktemp("ham"))
  release = os.path.join(tmp, "release")
  rows = fixture_trees.make_ham10000(release, n=N)
  Image.fromarray(np.zeros((24, 30), np.uint8)).save(mask_path(release, rows[EMPTY_MASK_ROW]))
  builder = build(tmp, release)
  return rows, builder, read_records(builder, "image_id")


def test_every_row_maps_to_its_exact_example(built):
  rows, _, records = built
  assert len(records) == N
  for i, row in enumerate(rows):
    r = records[row["image_id"]]
    assert r["label"] == CLASS_NAMES.index(row["dx"])
    assert r["malignant"] == int(row["dx"] in ("mel", "bcc", "akiec"))
    assert r["lesion_id"].decode() == row["lesion_id"]
    for field in ("sex", "localization", "dx_type"):
      assert r[field].decode() == row[field], (i, field)
    if row["age"]:
      assert r["age"] == float(row["age"])
    else:
      assert math.isnan(r["age"])
    # The flat background colour identifies the file behind the example.
    np.testing.assert_allclose(r["image"][0, 0], fixture_trees.image_colour(i), atol=12)
    assert fixture_trees.closest_colour(r["image"][0, 0], N) == i
    assert r["image"].shape == (SIZE, SIZE, 3) and r["image"].dtype == np.uint8


def test_specific_rows(built):
  rows, _, records = built
  # Lesion 1 is mel (binary malignant); lesion 4's age is blank; lesion 5's sex is unknown.
  mel = records[rows[1]["image_id"]]
  assert (mel["label"], mel["malignant"], mel["dx_type"]) == (1, 1, b"histo")
  assert rows[1]["lesion_id"] == rows[2]["lesion_id"] == "HAM_0000125"
  blank_age = [r for r in rows if not r["age"]]
  assert blank_age and all(math.isnan(records[r["image_id"]]["age"]) for r in blank_age)
  assert {records[r["image_id"]]["sex"] for r in rows if r["sex"] == "unknown"} == {b"unknown"}


def test_roi_mask_is_the_nearest_resized_segmentation(built):
  rows, builder, records = built
  assert builder.info.metadata["build"]["roi_masks"] is True
  for i, row in enumerate(rows[:10]):
    _, mask = fixture_trees.lesion_image(i, 30, 24)
    expected = np.asarray(Image.fromarray(mask).resize((SIZE, SIZE), Image.Resampling.NEAREST))
    r = records[row["image_id"]]
    np.testing.assert_array_equal(r["roi_mask"], (expected >= 128).astype(np.uint8))
    assert r["has_roi_mask"] == 1 and r["roi_mask"].any()


def test_an_all_zero_mask_is_an_empty_roi(built):
  rows, _, records = built
  r = records[rows[EMPTY_MASK_ROW]["image_id"]]
  assert r["has_roi_mask"] == 1 and not r["roi_mask"].any()


def test_lesions_never_cross_splits_and_sizes_add_up(built):
  _, builder, records = built
  by_lesion = {}
  for r in records.values():
    by_lesion.setdefault(r["lesion_id"], set()).add(r["split"])
  assert len(by_lesion) < len(records)
  assert all(len(s) == 1 for s in by_lesion.values())
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert sum(sizes.values()) == N and min(sizes.values()) > 0
  np.testing.assert_allclose([sizes[k] / N for k in ("train", "validation", "test")],
                             [0.64, 0.16, 0.20], atol=0.1)
  build_info = builder.info.metadata["build"]
  assert build_info["csv_rows"] == N and build_info["skipped"]["count"] == 0


def test_metadata_statistics_fitted_on_train_and_saved_with_the_dataset(built, tmp_path):
  rows, builder, records = built
  train = [r for r in rows if records[r["image_id"]]["split"] == "train"]
  ages = np.array([float(r["age"]) if r["age"] else np.nan for r in train])
  missing = np.isnan(ages)
  median = float(np.median(ages[~missing]))
  imputed = np.where(missing, median, ages)
  saved = saved_statistics.read_encoder(builder.data_dir)
  assert missing.sum() > 0 and saved.num_imputed == int(missing.sum())
  assert saved.age_median == median
  assert saved.age_mean == pytest.approx(imputed.mean())
  assert saved.age_std == pytest.approx(imputed.std())
  assert saved.field_names == ("age", "sex", "localization", "dx_type") and saved.dim == 24
  # Training and evaluation reuse it (and keep a copy in the workdir).
  pre = pipeline.fit_preprocessor(_data_config(), builder, str(tmp_path))
  assert pre.meta_encoder == saved
  with open(tmp_path / "data" / "metadata_encoder.json") as f:
    assert metadata.MetadataEncoder.from_json(f.read()) == saved
  test_rows = [r for r in rows if records[r["image_id"]]["split"] == "test"]
  encoded = pre.meta_encoder.transform(
      {f: [records[r["image_id"]][f] for r in test_rows] for f in saved.field_names})
  expected = [((float(r["age"]) if r["age"] else median) - imputed.mean()) / imputed.std()
              for r in test_rows]
  np.testing.assert_allclose(encoded[:, 0], expected, rtol=1e-5)


def _data_config():
  import ml_collections
  return ml_collections.ConfigDict({
      "name": "ham10000", "use_meta": True, "use_text": False, "label_key": "label",
      "meta_fields": ("age", "sex", "localization", "dx_type"), "image_mean": (0.5,) * 3,
      "image_std": (0.25,) * 3})


def test_meta_fields_must_match_the_saved_statistics(built):
  _, builder, _ = built
  config = _data_config()
  config.meta_fields = ("age", "sex")
  with pytest.raises(ValueError, match=r"meta_fields \('age', 'sex'\) differ.*dx_type"):
    pipeline.fit_preprocessor(config, builder, None)


def test_without_segmentation_folder_masks_are_empty_and_flagged(tmp_path, read_records):
  release = str(tmp_path / "release")
  fixture_trees.make_ham10000(release, n=20, masks=False)
  builder = build(str(tmp_path), release)
  assert builder.info.metadata["build"]["roi_masks"] is False
  for r in read_records(builder, "image_id").values():
    assert r["has_roi_mask"] == 0 and not r["roi_mask"].any()


BAD = {3: {"localization": "elbow"}, 6: {"age": "fifty"}, 12: {"dx": "melanoma"},
       15: {"lesion_id": ""}}


def bad_tree(root):
  """Bad rows of the first pass (CSV values, missing or empty files; rows 3-30, 25 and 27
  empty files) and of the second (files that do not decode right: rows 20, 35, 38, 41)."""
  rows = fixture_trees.make_ham10000(root, n=N, overrides=BAD, missing_images=(9,),
                                     corrupt_images=(20,), missing_masks=(30,))
  with open(os.path.join(root, "HAM10000_metadata.csv"), "a") as f:
    f.write(",".join(rows[13][c] for c in fixture_trees.HAM_COLUMNS) + "\n")  # a repeat
  open(image_path(root, rows[25]), "wb").close()
  open(mask_path(root, rows[27]), "wb").close()
  break_files(root, rows, transposed_mask=35, mask_0_1=38, image_16_bit=41)
  return rows


def break_files(root, rows, transposed_mask, mask_0_1, image_16_bit):
  """A mask of the transposed size (24 wide, 30 high: its image is 30 x 24), a mask saved as 0/1,
  a 16-bit grayscale image (a PNG under the .jpg name)."""
  mask = np.zeros((30, 24), np.uint8)
  mask[:10, :8] = 255
  Image.fromarray(mask).save(mask_path(root, rows[transposed_mask]))
  _, true_mask = fixture_trees.lesion_image(mask_0_1, 30, 24)
  Image.fromarray((true_mask > 0).astype(np.uint8)).save(mask_path(root, rows[mask_0_1]))
  Image.fromarray(np.full((24, 30), 30000, np.uint16)).save(image_path(root, rows[image_16_bit]),
                                                           "PNG")


def test_strict_build_names_file_line_and_problem(tmp_path):
  release = str(tmp_path / "release")
  rows = bad_tree(release)
  with pytest.raises(bad_rows.BadRowsError) as error:
    build(str(tmp_path), release)
  text = str(error.value)
  for line, what in ((5, "localization 'elbow' is not one of"), (8, "age 'fifty' is not a number"),
                     (11, f"{rows[9]['image_id']}.jpg is in neither"),
                     (14, "dx 'melanoma' is not one of"), (17, "lesion_id is empty"),
                     (32, "_segmentation.png not found"),
                     (27, f"{rows[25]['image_id']}.jpg is empty (0 bytes)"),
                     (29, f"{rows[27]['image_id']}_segmentation.png is empty (0 bytes)"),
                     (N + 2, f"image_id {rows[13]['image_id']} repeats line 15")):
    assert f"HAM10000_metadata.csv line {line}" in text and what in text, (line, what)
  assert "skip_bad_rows=True" in text
  assert not os.path.exists(os.path.join(str(tmp_path), "data", "ham10000", "px16_seed0", "1.0.0"))


def test_skipping_counts_every_bad_row_by_kind(tmp_path):
  release = str(tmp_path / "release")
  bad_tree(release)
  builder = build(str(tmp_path), release, skip_bad_rows=True)
  assert builder.builder_config.name == "px16_seed0_skip"
  info = builder.info.metadata["build"]
  skipped = info["skipped"]
  assert skipped["by_kind"] == {"corrupt_image": 2, "corrupt_mask": 1, "duplicate_id": 1,
                                "mask_below_threshold": 1, "mask_size_mismatch": 1,
                                "missing_id": 1, "missing_image": 1, "missing_mask": 1,
                                "non_numeric_age": 1, "unknown_category": 2,
                                "unsupported_image_mode": 1}
  examples = sum(s.num_examples for s in builder.info.splits.values())
  assert info["csv_rows"] == N + 1 == examples + skipped["count"]
  assert {r["line"] for r in skipped["rows"]} == {5, 8, 11, 14, 17, 22, 27, 29, 32, 37, 40, 43,
                                                  N + 2}
  # Saved with the dataset: metadata.json next to the records.
  with open(os.path.join(builder.data_dir, "metadata.json")) as f:
    assert json.load(f)["build"]["skipped"]["count"] == 13


def test_corrupt_image_stops_a_strict_build_with_its_line(tmp_path):
  release = str(tmp_path / "release")
  rows = fixture_trees.make_ham10000(release, n=20, corrupt_images=(7,))
  with pytest.raises(bad_rows.BadRowsError,
                     match=rf"HAM10000_metadata.csv line 9 \({rows[7]['image_id']}\): cannot "
                           rf"decode image file .*{rows[7]['image_id']}.jpg"):
    build(str(tmp_path), release)


def test_a_strict_build_reads_every_file_then_lists_all_the_bad_ones(tmp_path):
  # Files that only fail to decode, in rows of all three splits (train, train, test,
  # validation): one build names them all.
  release = str(tmp_path / "release")
  rows = fixture_trees.make_ham10000(release, n=30, corrupt_images=(2,))
  break_files(release, rows, transposed_mask=11, mask_0_1=19, image_16_bit=27)
  with pytest.raises(bad_rows.BadRowsError, match=r"ham10000: 4 bad row\(s\)") as error:
    build(str(tmp_path), release)
  text = str(error.value)
  for row, what in ((2, "cannot decode image file"),
                    (11, "is 24x30 (width x height) but its image"),
                    (19, "has non-zero pixels but none >= 128 (largest value 1)"),
                    (27, "has PIL mode 'I;16'")):
    assert f"HAM10000_metadata.csv line {row + 2} ({rows[row]['image_id']}): " in text, row
    assert what in text, what
  assert not os.path.exists(os.path.join(str(tmp_path), "data", "ham10000", "px16_seed0",
                                         "1.0.0"))


def test_no_usable_rows_says_why(tmp_path):
  release = str(tmp_path / "release")
  rows = fixture_trees.make_ham10000(release, n=6, missing_images=range(6))
  with pytest.raises(ValueError, match=r"(?s)ham10000: no usable rows in .*HAM10000_metadata.csv: "
                                       r"it has 6 data row\(s\); 6 bad row\(s\) skipped "
                                       r"\{'missing_image': 6\}, e.g. HAM10000_metadata.csv line 2 "
                                       rf"\({rows[0]['image_id']}\): .*Is the release laid out as "
                                       r"expected\?\n.*HAM10000_images_part_1/"):
    build(str(tmp_path), release, skip_bad_rows=True)
  # Strict: the bad rows are listed, without suggesting a skip that would leave nothing.
  with pytest.raises(bad_rows.BadRowsError) as error:
    build(str(tmp_path), release)
  assert "6 bad row(s)" in str(error.value)
  assert "skip_bad_rows=True would not help" in str(error.value)
  assert bad_rows.SKIP_HINT not in str(error.value)
  with open(os.path.join(release, "HAM10000_metadata.csv"), "w") as f:
    f.write(",".join(fixture_trees.HAM_COLUMNS) + "\n")
  with pytest.raises(ValueError, match=r"no usable rows in .*HAM10000_metadata.csv: it has 0 "
                                       r"data row\(s\)\.\n"):
    build(str(tmp_path), release)


def stray_quote_tree(root: str) -> list[dict]:
  """40 rows; a typo'd quote before the localization of line 5 runs to the same typo on line
  12, so lines 5-12 (rows 3-10) read as one CSV record."""
  rows = fixture_trees.make_ham10000(root, n=40)
  path = os.path.join(root, "HAM10000_metadata.csv")
  with open(path, newline="") as f:
    lines = f.read().splitlines(keepends=True)
  for line in (5, 12):
    lines[line - 1] = ',"'.join(lines[line - 1].rsplit(",", 1))
  with open(path, "w", newline="") as f:
    f.write("".join(lines))
  return rows


def test_a_stray_quote_stops_a_strict_build_at_the_line_it_starts(tmp_path):
  release = str(tmp_path / "release")
  rows = stray_quote_tree(release)
  with pytest.raises(bad_rows.BadRowsError,
                     match=rf"8 bad row\(s\).*\n  HAM10000_metadata.csv line 5 "
                           rf"\({rows[3]['image_id']}\): a quote on line 5 opens a field that "
                           rf"runs to line 12, so lines 5-12 \(8 rows\) read as one record"):
    build(str(tmp_path), release)


def test_skipping_a_stray_quote_counts_every_row_it_swallowed(tmp_path, read_records):
  release = str(tmp_path / "release")
  rows = stray_quote_tree(release)
  builder = build(str(tmp_path), release, skip_bad_rows=True)
  info = builder.info.metadata["build"]
  skipped = info["skipped"]
  assert skipped["by_kind"] == {"stray_quote": 8}
  assert [(r["line"], r["key"]) for r in skipped["rows"]] == [
      (i + 2, rows[i]["image_id"]) for i in range(3, 11)]
  records = read_records(builder, "image_id")
  assert info["csv_rows"] == 40 == len(records) + skipped["count"]
  assert set(records) == {r["image_id"] for i, r in enumerate(rows) if not 3 <= i <= 10}


def test_a_split_emptied_by_bad_images_is_a_clear_error(tmp_path):
  release = str(tmp_path / "release")
  rows = fixture_trees.make_ham10000(release, n=30)
  builder = builders.get_builder("ham10000", data_dir=str(tmp_path / "data"),
                                 manual_dir=release, image_size=SIZE, skip_bad_rows=True)
  entries, _ = builder.read_entries(release, bad_rows.BadRowLog("ham10000", strict=False))
  validation = {e.key for e in builder.assign_splits(entries)["validation"]}
  corrupt = [i for i, row in enumerate(rows) if row["image_id"] in validation]
  fixture_trees.make_ham10000(release, n=30, corrupt_images=corrupt)  # found in pass 2 only
  with pytest.raises(ValueError, match=rf"ham10000: split\(s\) \['validation'\] would be empty: "
                                       rf"all its {len(corrupt)} rows of .*HAM10000_metadata.csv "
                                       rf"were skipped as bad: {len(corrupt)} bad row\(s\) "
                                       rf"skipped {{'corrupt_image': {len(corrupt)}}}, e.g. "
                                       rf"HAM10000_metadata.csv line \d+ \(ISIC_\d+\): cannot "
                                       rf"decode image file"):
    build(str(tmp_path), release, skip_bad_rows=True)
  with pytest.raises(bad_rows.BadRowsError, match=r"Without them no row of split 'validation' "
                                                  r"is left, so skip_bad_rows=True would not "
                                                  r"help"):
    build(str(tmp_path), release)
  # Nothing half-written counts as prepared: the fixed release builds in the same data_dir.
  assert not os.path.exists(os.path.join(str(tmp_path), "data", "ham10000", "px16_seed0_skip",
                                         "1.0.0"))
  fixture_trees.make_ham10000(release, n=30)
  rebuilt = build(str(tmp_path), release, skip_bad_rows=True)
  assert sum(s.num_examples for s in rebuilt.info.splits.values()) == 30


def test_missing_column_is_an_error_naming_file_and_column(tmp_path):
  release = str(tmp_path / "release")
  fixture_trees.make_ham10000(release, n=12, drop_columns=("dx_type",))
  with pytest.raises(ValueError, match=r"HAM10000_metadata.csv: missing column\(s\) \['dx_type'\]"):
    build(str(tmp_path), release, skip_bad_rows=True)


def test_missing_release_lists_expected_files_and_source(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)HAM10000_metadata.csv.*"
                                              r"HAM10000_images_part_2/.*doi.org/10.7910"):
    build(str(tmp_path), str(tmp_path / "nowhere"))
  release = tmp_path / "partial"
  fixture_trees.make_ham10000(str(release), n=6)
  os.rename(release / "HAM10000_images_part_2", release / "elsewhere")
  with pytest.raises(FileNotFoundError, match=r"lacks \['HAM10000_images_part_2/'\]"):
    build(str(tmp_path), str(release))
