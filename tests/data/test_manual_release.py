"""What the real-dataset builders share: manual_dir resolution, config overrides, CSV reading,
image decoding, reuse without the release, the config.data plumbing, no TensorFlow."""
import gzip
import os
import re
import subprocess
import sys
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

import fixture_trees
from jaxmm.data import bad_rows
from jaxmm.data import builders
from jaxmm.data import image_files
from jaxmm.data import manual_dir
from jaxmm.data import pipeline
from jaxmm.data import release_csv


def test_manual_dir_resolution_order(tmp_path, monkeypatch):
  d = str(tmp_path)
  monkeypatch.delenv(manual_dir.ENV_VAR, raising=False)
  assert manual_dir.resolve("ham10000", None, d) == os.path.join(d, "manual", "ham10000")
  monkeypatch.setenv(manual_dir.ENV_VAR, os.path.join(d, "releases"))
  assert manual_dir.resolve("ham10000", None, d) == os.path.join(d, "releases", "ham10000")
  assert manual_dir.resolve("ham10000", os.path.join(d, "mine"), d) == os.path.join(d, "mine")
  builder = builders.get_builder("isic2020", data_dir=d)
  assert builder.manual_dir == os.path.join(d, "releases", "isic2020")
  with pytest.raises(ValueError, match="synthetic_derm is generated locally"):
    builders.get_builder("synthetic_derm", data_dir=d, manual_dir=d)


def test_config_overrides_are_the_builders_config_fields(tmp_path):
  d = str(tmp_path)
  assert builders.config_fields(builders.DATASETS["synthetic_derm"]) == (
      "num_examples", "image_size", "seed")
  assert builders.config_fields(builders.DATASETS["ham10000"]) == (
      "image_size", "skip_bad_rows", "seed")
  assert builders.config_fields(builders.DATASETS["mimic_cxr"]) == (
      "image_size", "skip_bad_rows", "seed", "split", "views")
  with pytest.raises(ValueError, match=r"\['num_examples'\] of ham10000; valid overrides: "
                                       r"\['image_size', 'skip_bad_rows', 'seed'\]"):
    builders.get_builder("ham10000", data_dir=d, num_examples=5)
  ham = builders.get_builder("ham10000", data_dir=d, image_size=64, skip_bad_rows=True)
  assert ham.builder_config.name == "px64_seed0_skip"
  assert builders.config_values(ham) == {"image_size": 64, "skip_bad_rows": True, "seed": 0}
  assert builders.get_builder("ham10000", data_dir=d, image_size=224).builder_config.name == \
      "default"  # equal to the predefined config: nothing changes
  isic = builders.get_builder("isic2020", config="px32", data_dir=d, seed=None)
  assert isic.builder_config.name == "px32"
  mimic = builders.get_builder("mimic_cxr", config="grouped", data_dir=d, views=["PA", "AP"])
  assert mimic.builder_config.name == "grouped"  # a list override equals the tuple default
  mimic = builders.get_builder("mimic_cxr", data_dir=d, image_size=32, views=("pa", "ll"))
  assert (mimic.builder_config.name, mimic.builder_config.views) == (
      "px32_seed0_official_PA_LL", ("PA", "LL"))


def test_csv_rows_carry_line_numbers_and_malformed_rows_are_flagged(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text('\ufeffa,b,c\n1,2,3\n\n4,"two\nlines",6\n7,8\n9,10,11,12\n', encoding="utf-8")
  rows = list(release_csv.read_rows(str(path), ("a", "c")))
  assert [(r.line, r.fields["a"], r.kind if r.problem else None) for r in rows] == [
      (2, "1", None), (4, "4", "stray_quote"), (5, 'lines"', "stray_quote"),
      (6, "7", "malformed_row"), (7, "9", "malformed_row")]
  assert rows[3].problem == "has 2 fields, the header has 3" and rows[3].fields["c"] == ""
  assert rows[4].problem == "has 4 fields, the header has 3"
  with pytest.raises(ValueError, match=r"t.csv: missing column\(s\) \['d'\]; its header is "
                                       r"\['a', 'b', 'c'\]"):
    list(release_csv.read_rows(str(path), ("a", "d")))


def test_a_stray_quote_makes_every_row_it_swallowed_a_bad_row(tmp_path):
  # Line 3 opens a quote that line 7 closes (a blank line 5 in between is not a row): lines
  # 3-7 read as one record, so each of its 4 rows is bad, named with its own line and id.
  path = tmp_path / "t.csv"
  path.write_text('id,x\nk1,a\nk2,"b\nk3,c\n\nk4,d\nk5,"e\nk6,f\n', encoding="utf-8")
  rows = list(release_csv.read_rows(str(path), ("id", "x")))
  assert [(r.line, r.fields["id"], r.kind if r.problem else None) for r in rows] == [
      (2, "k1", None), (3, "k2", "stray_quote"), (4, "k3", "stray_quote"),
      (6, "k4", "stray_quote"), (7, "k5", "stray_quote"), (8, "k6", None)]
  assert rows[1].problem.startswith("a quote on line 3 opens a field that runs to line 7, so "
                                    "lines 3-7 (4 rows) read as one record and are all lost")
  assert rows[2].problem == ("swallowed by the stray quote on line 3 (lines 3-7 read as one "
                             "record)")
  # A quote never closed swallows the rest of the file; in the header it is an error.
  path.write_text('id,x\nk1,a\nk2,"b\nk3,c\n', encoding="utf-8")
  assert [(r.line, r.kind) for r in release_csv.read_rows(str(path), ("id",))][1:] == [
      (3, "stray_quote"), (4, "stray_quote")]
  path.write_text('id,"x\nk1,a\nk2,b\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"t.csv: its header runs over lines 1-3: a quote in it "
                                       r"is stray"):
    list(release_csv.read_rows(str(path), ("id",)))


def test_a_repeated_column_is_an_error_naming_file_and_column(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text("id,dx,age,dx,,\nk1,mel,40,nv,,\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"t.csv: column\(s\) \['dx'\] repeat in its header "
                                       r"\['id', 'dx', 'age', 'dx', '', ''\]"):
    list(release_csv.read_rows(str(path), ("id", "dx")))
  path.write_text("id,dx,age,,\nk1,mel,40,,\n", encoding="utf-8")  # blank names may repeat
  assert [r.fields["dx"] for r in release_csv.read_rows(str(path), ("id", "dx"))] == ["mel"]


def test_a_broken_gzip_table_is_an_error_naming_file_and_line(tmp_path):
  text = "a,b\n" + "".join(f"{i},{i}\n" for i in range(30000))
  data = gzip.compress(text.encode())
  (tmp_path / "ok.csv.gz").write_bytes(data)
  assert len(list(release_csv.read_rows(str(tmp_path / "ok.csv"), ("a",)))) == 30000
  broken = {"truncated": data[:len(data) // 2], "not_gzip": b"a,b\n1,2\n",
            "flipped": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]}
  for name, blob in broken.items():
    path = tmp_path / f"{name}.csv.gz"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r" line \d+: not readable as "
                                         r"gzip \(truncated or corrupt download"):
      list(release_csv.read_rows(str(tmp_path / f"{name}.csv"), ("a",)))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r" line \d+: not readable as "
                                         r"gzip"):
      release_csv.undecodable_line(str(path))
  # The line named is the first one not read: at most one past the complete lines left.
  with pytest.raises(ValueError, match=r"truncated.csv.gz line") as error:
    list(release_csv.read_rows(str(tmp_path / "truncated.csv"), ("a",)))
  line = int(re.search(r"truncated.csv.gz line (\d+)", str(error.value)).group(1))
  left = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(broken["truncated"])
  assert 2 < line <= left.count(b"\n") + 1


def test_images_resized_and_bad_files_named(tmp_path):
  pixels = np.zeros((30, 40, 3), np.uint8)
  pixels[:, 20:] = 200
  Image.fromarray(pixels).save(tmp_path / "a.png")
  out = image_files.load_image(str(tmp_path / "a.png"), 8)
  assert out.shape == (8, 8, 3) and out[:, :3].max() < 10 and out[:, -3:].min() > 190
  gray = image_files.load_image(str(tmp_path / "a.png"), 8, "L")
  assert gray.shape == (8, 8, 1)
  mask = np.zeros((30, 40), np.uint8)
  mask[10:20, 10:30] = 255
  Image.fromarray(mask).save(tmp_path / "m.png")
  small = image_files.load_mask(str(tmp_path / "m.png"), 4)
  # Nearest samples pixel centres (x 5, 15, 25, 35; y 3.75, 11.25, 18.75, 26.25).
  np.testing.assert_array_equal(small, [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
  (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(bad_rows.BadInput, match=r"cannot decode image file .*bad.jpg") as error:
    image_files.load_image(str(tmp_path / "bad.jpg"), 8)
  assert error.value.kind == "corrupt_image"
  with pytest.raises(bad_rows.BadInput, match=r"mask file .*none.png not found") as error:
    image_files.load_mask(str(tmp_path / "none.png"), 8)
  assert error.value.kind == "missing_mask"


def test_only_8_bit_files_are_read_16_bit_and_float_ones_are_named(tmp_path):
  # PIL's convert() would clip a 16-bit value of 30000 to 255 and turn a float image into 0.
  files = {"i16.png": Image.fromarray(np.full((6, 9), 30000, np.uint16)),
           "f.tif": Image.fromarray(np.full((6, 9), 0.5, np.float32))}
  for name, img in files.items():
    img.save(tmp_path / name)
    for load, what in ((image_files.load_image, "image"), (image_files.load_mask, "mask")):
      with pytest.raises(bad_rows.BadInput) as error:
        load(str(tmp_path / name), 4)
      assert error.value.kind == f"unsupported_{what}_mode"
      assert str(error.value).startswith(f"{what} file {tmp_path / name} has PIL mode "
                                         f"{Image.open(tmp_path / name).mode!r}")
  # The 8-bit modes convert faithfully: bilevel, palette, alpha, CMYK.
  gray = np.full((6, 9), 200, np.uint8)
  Image.fromarray(np.full((6, 9), 255, np.uint8)).convert("1").save(tmp_path / "one.png")
  Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
  Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
  Image.fromarray(np.dstack([gray] * 3)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
  assert (image_files.load_image(str(tmp_path / "one.png"), 4, "L") == 255).all()
  for name in ("p.png", "la.png", "cmyk.jpg"):
    np.testing.assert_allclose(image_files.load_image(str(tmp_path / name), 4), 200, atol=2)


def test_masks_must_be_0_255_and_the_size_of_their_image(tmp_path):
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "image.png")
  mask = np.zeros((30, 40), np.uint8)
  mask[10:20, 10:30] = 1  # saved 0/1: read as >= 128 it would be an empty mask
  Image.fromarray(mask).save(tmp_path / "01.png")
  with pytest.raises(bad_rows.BadInput, match=r"mask file .*01.png has non-zero pixels but none "
                                              r">= 128 \(largest value 1\)") as error:
    image_files.load_mask(str(tmp_path / "01.png"), 4)
  assert error.value.kind == "mask_below_threshold"
  Image.fromarray(mask * 255).save(tmp_path / "m.png")
  image = str(tmp_path / "image.png")
  assert image_files.load_mask(str(tmp_path / "m.png"), 4, image).sum() == 4
  Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "empty.png")
  assert not image_files.load_mask(str(tmp_path / "empty.png"), 4, image).any()  # empty ROI
  Image.fromarray((mask * 255).T).save(tmp_path / "transposed.png")
  with pytest.raises(bad_rows.BadInput) as error:
    image_files.load_mask(str(tmp_path / "transposed.png"), 4, image)
  assert error.value.kind == "mask_size_mismatch"
  assert str(error.value).startswith(f"mask file {tmp_path / 'transposed.png'} is 30x40 (width "
                                     f"x height) but its image {image} is 40x30")


def test_lines_of_only_whitespace_are_blank_not_rows(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text("a,b\r\n1,2\r\n   \r\n\t \r\n3,4\r\n  \r\n", encoding="utf-8")
  assert [(r.line, r.fields["a"], r.problem) for r in release_csv.read_rows(str(path), ("a",))] \
      == [(2, "1", None), (5, "3", None)]


def test_a_manual_dir_that_is_a_file_gets_the_layout_error(tmp_path):
  release = tmp_path / "release"
  fixture_trees.make_isic2020(str(release), n=4)
  with pytest.raises(NotADirectoryError, match=r"(?s)isic2020: manual download folder "
                                               + re.escape(str(release / "train.csv")) +
                                               r" is a file, not a folder.*\n  train.csv .*"
                                               r"jpeg/train/ .*isic-archive"):
    builders.prepare(builders.get_builder("isic2020", data_dir=str(tmp_path / "data"),
                                          manual_dir=str(release / "train.csv"), image_size=8))


def test_prepared_dataset_is_reused_without_its_release(tmp_path):
  release = str(tmp_path / "release")
  fixture_trees.make_isic2020(release, n=24)
  data = str(tmp_path / "data")
  first = builders.prepare(builders.get_builder("isic2020", data_dir=data, manual_dir=release,
                                                image_size=8))
  os.rename(release, str(tmp_path / "moved"))
  source = builders.load("isic2020", "train", data_dir=data, image_size=8,
                         manual_dir=str(tmp_path / "nowhere"))
  assert len(source) == first.info.splits["train"].num_examples


def test_pipeline_reads_manual_dir_from_the_data_config(tmp_path):
  release = str(tmp_path / "release")
  fixture_trees.make_mimic_cxr(release, n_subjects=6)
  config = ml_collections.ConfigDict({
      "name": "mimic_cxr", "builder_config": "default", "data_dir": str(tmp_path / "data"),
      "manual_dir": release, "builder_overrides": {"image_size": 8, "split": "grouped"}})
  builder = pipeline.load_builder(config)
  assert builder.builder_config.name == "px8_seed0_grouped_PA_AP"
  assert builder.manual_dir == release
  config.manual_dir = None
  config.builder_overrides.image_size = 12
  with pytest.raises(FileNotFoundError, match=r"(?s)mimic_cxr.*manual/mimic_cxr.*"
                                              r"mimic-cxr-2.0.0-metadata.csv.*physionet"):
    pipeline.load_builder(config)


def test_building_a_real_dataset_never_imports_tensorflow(tmp_path):
  release = str(tmp_path / "release")
  fixture_trees.make_ham10000(release, n=20)
  code = (
      "import sys\n"
      "from jaxmm.data import builders\n"
      f"s = builders.load('ham10000', 'train', data_dir={str(tmp_path)!r}, "
      f"manual_dir={release!r}, image_size=8, seed=1)\n"
      "assert s[0]['image'].shape == (8, 8, 3)\n"
      "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
