"""mimic_cxr builder on generated fixture trees: labels, views, reports, splits, vocab, bad rows."""
import importlib.util
import os

import numpy as np
import pytest

import fixture_trees
from jaxmm.data import bad_rows
from jaxmm.data import builders
from jaxmm.data import cxr_reports
from jaxmm.data import mimic_cxr
from jaxmm.data import tokenizer

SIZE = 16
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLITS = {"train": "train", "validate": "validation", "test": "test"}


def build(tmp, manual, **overrides):
  return builders.prepare(builders.get_builder("mimic_cxr", data_dir=os.path.join(tmp, "data"),
                                               manual_dir=manual, image_size=SIZE, **overrides))


def expected_labels(row: dict) -> list:
  return [int(float(row[n])) if row[n] else -2 for n in fixture_trees.CHEXPERT_LABELS]


# Study 0's report: an upper-case abbreviation before a colon inside FINDINGS is text.
PICC_REPORT = (" FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with "
               "cough\n \n FINDINGS: \n \n Heart size normal. Left PICC: tip in the low SVC. "
               "The lungs are clear.\n \n IMPRESSION: \n \n No acute cardiopulmonary process.\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("mimic"))
  tables = fixture_trees.make_mimic_cxr(os.path.join(root, "release"), n_subjects=16)
  study = tables["chexpert"][0]
  tables["reports"][study["study_id"]] = PICC_REPORT
  with open(mimic_cxr.study_folder(os.path.join(root, "release"), study["subject_id"],
                                   study["study_id"]) + ".txt", "w", encoding="utf-8") as f:
    f.write(PICC_REPORT)
  return root, tables


@pytest.fixture(scope="module")
def built(release, read_records):
  root, tables = release
  builder = build(root, os.path.join(root, "release"))
  return tables, builder, read_records(builder, "dicom_id")


def test_features_mirror_synthetic_cxr_in_label_order(tmp_path):
  spec = importlib.util.spec_from_file_location("cxr_config",
                                                os.path.join(REPO, "configs", "synthetic_cxr.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert mimic_cxr.CHEXPERT_LABELS == module.CHEXPERT_LABELS == cxr_reports.CHEXPERT_LABELS
  assert mimic_cxr.CHEXPERT_LABELS == fixture_trees.CHEXPERT_LABELS
  real = builders.get_builder("mimic_cxr", data_dir=str(tmp_path), image_size=SIZE).info.features
  synthetic = builders.get_builder("synthetic_cxr", data_dir=str(tmp_path),
                                   image_size=SIZE).info.features
  for key in ("image", "label", "report", "patient_id", "study_id"):
    assert type(real[key]) is type(synthetic[key]), key
  for key in ("image", "label"):
    assert (real[key].shape, real[key].np_dtype) == (synthetic[key].shape,
                                                     synthetic[key].np_dtype)


def test_frontal_images_with_study_labels_official_split_and_clean_reports(built):
  tables, builder, records = built
  frontal = [r for r in tables["metadata"] if r["ViewPosition"] in ("PA", "AP")]
  assert 0 < len(frontal) < len(tables["metadata"]) and len(records) == len(frontal)
  labels = {r["study_id"]: expected_labels(r) for r in tables["chexpert"]}
  split_of = {r["dicom_id"]: SPLITS[r["split"]] for r in tables["split"]}
  for row in frontal:
    r = records[row["dicom_id"]]
    assert r["label"].dtype == np.int32 and r["label"].tolist() == labels[row["study_id"]]
    assert r["split"] == split_of[row["dicom_id"]]
    assert r["patient_id"].decode() == "p" + row["subject_id"]
    assert r["study_id"].decode() == "s" + row["study_id"]
    assert r["view_position"].decode() == row["ViewPosition"]
    assert r["report"].decode() == tokenizer.clean_report(tables["reports"][row["study_id"]])
    assert r["image"].shape == (SIZE, SIZE, 1) and r["image"].dtype == np.uint8
  build_info = builder.info.metadata["build"]
  assert build_info["csv_rows"] == len(tables["metadata"])
  assert build_info["filtered"] == {"ViewPosition not in ['PA', 'AP']":
                                    len(tables["metadata"]) - len(frontal)}


def test_specific_study_labels_and_reports(built):
  tables, _, records = built
  by_study = {r["study_id"].decode(): r for r in records.values()}
  # Study 1: Edema -1, Pleural Effusion 1, Pneumothorax 0, everything else blank -> -2.
  study1 = by_study["s50004111"]["label"].tolist()
  assert study1 == [-2, -2, -2, -1, -2, -2, -2, -2, -2, 1, -2, -2, 0, -2]
  assert by_study["s50004111"]["report"] == (b"there is pleural effusion no pneumothorax possible "
                                             b"edema cannot exclude there is pleural effusion")
  # Study 3's report has only an IMPRESSION: the header text before it is dropped.
  assert by_study["s50012333"]["report"] == b"possible atelectasis cannot exclude"
  assert by_study["s50000000"]["report"] == (b"heart size normal left picc tip in the low svc "
                                             b"the lungs are clear no acute cardiopulmonary "
                                             b"process")


def test_a_report_with_empty_findings_and_impression_names_the_empty_sections(tmp_path):
  path = tmp_path / "s5.txt"
  path.write_text(" INDICATION: cough\n FINDINGS:\n \n IMPRESSION:\n", encoding="utf-8")
  with pytest.raises(bad_rows.BadInput) as error:
    mimic_cxr.read_report(str(path))
  assert (error.value.kind, str(error.value)) == (
      "empty_report", f"report file {path} has no text in its FINDINGS and IMPRESSION "
                      f"section(s), the ones kept (paper 001); its text is in INDICATION only")
  path.write_text(" \n \n", encoding="utf-8")
  with pytest.raises(bad_rows.BadInput, match=r"report file .*s5.txt has no text$"):
    mimic_cxr.read_report(str(path))


def test_vocab_of_training_reports(built):
  _, builder, records = built
  tok = tokenizer.load_tokenizer(builder.data_dir)
  vocab = tok.get_vocab()
  for r in records.values():
    if r["split"] == "train":
      assert all(w in vocab for w in r["report"].decode().split())
  assert tok.unk_token_id not in tok("pneumomediastinum")["input_ids"]  # character fallback


def test_grouped_split_keeps_subjects_together(release, read_records):
  root, tables = release
  builder = build(root, os.path.join(root, "release"), split="grouped")
  assert builder.builder_config.name == "px16_seed0_grouped_PA_AP"
  records = read_records(builder, "dicom_id")
  by_subject = {}
  for r in records.values():
    by_subject.setdefault(r["patient_id"], set()).add(r["split"])
  assert all(len(s) == 1 for s in by_subject.values()) and len(by_subject) == 16
  assert all(s.num_examples > 0 for s in builder.info.splits.values())


def test_view_filter_is_configurable(release, read_records):
  root, tables = release
  builder = build(root, os.path.join(root, "release"), views=["PA"])
  assert builder.builder_config.views == ("PA",)
  records = read_records(builder, "dicom_id")
  assert {r["view_position"] for r in records.values()} == {b"PA"}
  pa = sum(r["ViewPosition"] == "PA" for r in tables["metadata"])
  assert len(records) == pa
  assert builder.info.metadata["build"]["filtered"] == {
      "ViewPosition not in ['PA']": len(tables["metadata"]) - pa}
  with pytest.raises(ValueError, match="split 'random' is not one of"):
    builders.get_builder("mimic_cxr", data_dir=root, split="random")
  with pytest.raises(ValueError, match=r"no usable rows in .*mimic-cxr-2.0.0-metadata.csv: it has "
                                       rf"{len(tables['metadata'])} data row\(s\); filtered out "
                                       rf"\{{\"ViewPosition not in \['LL'\]\": "
                                       rf"{len(tables['metadata'])}\}}"):
    build(root, os.path.join(root, "release"), views=["LL"])


def test_bad_rows_name_their_file_and_line(tmp_path):
  release = str(tmp_path / "release")
  tables = fixture_trees.mimic_tables(16)
  meta = tables["metadata"]
  frontal = [i for i, r in enumerate(meta) if r["ViewPosition"] != "LATERAL"]
  bad_study = meta[frontal[2]]["study_id"]
  study_row = [r["study_id"] for r in tables["chexpert"]].index(bad_study)
  split_row = [r["dicom_id"] for r in tables["split"]].index(meta[frontal[3]]["dicom_id"])
  fixture_trees.make_mimic_cxr(
      release, n_subjects=16, chexpert_overrides={study_row: {"Edema": "2.0"}},
      split_overrides={split_row: {"split": "dev"}}, overrides={frontal[4]: {"subject_id": "x"}},
      missing_images=(frontal[5],), corrupt_images=(frontal[6],),
      missing_reports=(meta[frontal[7]]["study_id"],))
  # An empty (0 bytes) report of a study no other bad row touches: found by the first pass.
  used = {meta[frontal[k]]["study_id"] for k in range(2, 8)}
  empty = next(i for i in frontal[8:] if meta[i]["study_id"] not in used)
  open(mimic_cxr.study_folder(release, meta[empty]["subject_id"], meta[empty]["study_id"])
       + ".txt", "wb").close()
  with pytest.raises(bad_rows.BadRowsError) as error:
    build(str(tmp_path), release)
  text = str(error.value)
  line = lambda k: f"mimic-cxr-2.0.0-metadata.csv line {frontal[k] + 2}"
  assert f"{line(2)} ({meta[frontal[2]]['dicom_id']}): mimic-cxr-2.0.0-chexpert.csv line " \
         f"{study_row + 2}: Edema value '2.0' is not 1.0, 0.0, -1.0 or blank" in text
  assert f"{line(3)} ({meta[frontal[3]]['dicom_id']}): mimic-cxr-2.0.0-split.csv line " \
         f"{split_row + 2}: split 'dev' is not one of" in text
  assert f"{line(4)}" in text and "subject_id 'x' is not a number" in text
  assert f"{line(5)}" in text and "image file" in text
  assert f"{line(7)}" in text and f"s{meta[frontal[7]]['study_id']}.txt not found" in text
  assert (f"mimic-cxr-2.0.0-metadata.csv line {empty + 2} ({meta[empty]['dicom_id']}): report "
          f"file ") in text and f"s{meta[empty]['study_id']}.txt is empty (0 bytes)" in text
  builder = build(str(tmp_path), release, skip_bad_rows=True)
  info = builder.info.metadata["build"]
  examples = sum(s.num_examples for s in builder.info.splits.values())
  # The bad report's study may hold more than one frontal image: count them all.
  report_rows = sum(1 for i in frontal if meta[i]["study_id"] == meta[frontal[7]]["study_id"])
  empty_rows = sum(1 for i in frontal if meta[i]["study_id"] == meta[empty]["study_id"])
  assert info["skipped"]["by_kind"] == {"corrupt_image": 1, "empty_report": empty_rows,
                                        "missing_id": 1, "missing_image": 1,
                                        "missing_report": report_rows, "unknown_category": 2}
  assert info["csv_rows"] == len(meta) == examples + info["skipped"]["count"] + sum(
      info["filtered"].values())


def test_missing_column(tmp_path):
  release = str(tmp_path / "release")
  fixture_trees.make_mimic_cxr(release, n_subjects=3, drop_columns=("ViewPosition",))
  with pytest.raises(ValueError, match=r"mimic-cxr-2.0.0-metadata.csv: missing column\(s\) "
                                       r"\['ViewPosition'\]"):
    build(str(tmp_path), release)


def test_an_empty_split_is_a_clear_error(tmp_path):
  release = str(tmp_path / "release")
  fixture_trees.make_mimic_cxr(release, n_subjects=5)  # subjects 0-4 are all official train
  with pytest.raises(ValueError, match=r"split\(s\) \['validation', 'test'\] would be empty"):
    build(str(tmp_path), release)


def test_gzipped_tables_as_physionet_ships_them(tmp_path, read_records):
  import gzip
  import shutil
  release = tmp_path / "release"
  tables = fixture_trees.make_mimic_cxr(str(release), n_subjects=8)
  for name in ("metadata", "chexpert", "split"):
    path = release / f"mimic-cxr-2.0.0-{name}.csv"
    with open(path, "rb") as f, gzip.open(str(path) + ".gz", "wb") as g:
      shutil.copyfileobj(f, g)
    path.unlink()
  records = read_records(build(str(tmp_path), str(release)), "dicom_id")
  assert len(records) == sum(r["ViewPosition"] != "LATERAL" for r in tables["metadata"])


def frontal_rows_by_subject(tables: dict) -> dict:
  """subject_id -> metadata row indices of its frontal (PA / AP) images, in CSV order."""
  out = {}
  for i, row in enumerate(tables["metadata"]):
    if row["ViewPosition"] in ("PA", "AP"):
      out.setdefault(row["subject_id"], []).append(i)
  return out


def test_ids_that_disagree_between_tables_are_bad_rows(tmp_path):
  release = str(tmp_path / "release")
  tables = fixture_trees.mimic_tables(16)
  meta = tables["metadata"]
  subjects = frontal_rows_by_subject(tables)
  first, second = (rows[0] for rows in list(subjects.values())[:2])
  study = meta[first]["study_id"]
  chexpert_row = [r["study_id"] for r in tables["chexpert"]].index(study)
  split_row = [r["dicom_id"] for r in tables["split"]].index(meta[second]["dicom_id"])
  fixture_trees.make_mimic_cxr(
      release, n_subjects=16, chexpert_overrides={chexpert_row: {"subject_id": "19999999"}},
      split_overrides={split_row: {"subject_id": "18888888", "study_id": "58888888"}})
  with pytest.raises(bad_rows.BadRowsError) as error:
    build(str(tmp_path), release)
  text = str(error.value)
  assert (f"mimic-cxr-2.0.0-metadata.csv line {first + 2} ({meta[first]['dicom_id']}): "
          f"mimic-cxr-2.0.0-chexpert.csv line {chexpert_row + 2} (study_id {study}) has "
          f"subject_id '19999999' but mimic-cxr-2.0.0-metadata.csv has subject_id "
          f"'{meta[first]['subject_id']}'") in text
  assert (f"mimic-cxr-2.0.0-metadata.csv line {second + 2} ({meta[second]['dicom_id']}): "
          f"mimic-cxr-2.0.0-split.csv line {split_row + 2} (dicom_id "
          f"{meta[second]['dicom_id']}) has subject_id '18888888', study_id '58888888' but "
          f"mimic-cxr-2.0.0-metadata.csv has subject_id '{meta[second]['subject_id']}', "
          f"study_id '{meta[second]['study_id']}'") in text
  builder = build(str(tmp_path), release, skip_bad_rows=True)
  info = builder.info.metadata["build"]
  # Every frontal image of the study takes the chexpert row's mismatch.
  study_rows = sum(1 for rows in subjects.values() for i in rows if meta[i]["study_id"] == study)
  assert info["skipped"]["by_kind"] == {"id_mismatch": study_rows + 1}
  examples = sum(s.num_examples for s in builder.info.splits.values())
  assert info["csv_rows"] == len(meta) == examples + info["skipped"]["count"] + sum(
      info["filtered"].values())


def test_official_split_that_leaks_a_subject_is_an_error(tmp_path, read_records):
  release = str(tmp_path / "release")
  tables = fixture_trees.mimic_tables(16)
  subject, rows = next((s, rows) for s, rows in frontal_rows_by_subject(tables).items()
                       if len(rows) >= 3 and tables["split"][rows[0]]["split"] == "train")
  fixture_trees.make_mimic_cxr(release, n_subjects=16, split_overrides={rows[0]: {"split": "test"}})
  for skip in (False, True):  # not a bad row: no row is wrong on its own
    with pytest.raises(ValueError) as error:
      build(str(tmp_path), release, skip_bad_rows=skip)
    text = str(error.value)
    assert "mimic-cxr-2.0.0-split.csv puts the images of 1 subject(s) in more than one split" \
           in text and "patient" in text
    assert (f"subject_id {subject} in test (line {rows[0] + 2}) and train (lines "
            f"{', '.join(str(i + 2) for i in rows[1:])})") in text
  # The grouped split ignores split.csv (it need not exist) and keeps each subject in one split.
  os.remove(os.path.join(release, mimic_cxr.SPLIT_CSV))
  with pytest.raises(FileNotFoundError, match=r"lacks \['mimic-cxr-2.0.0-split.csv'\]"):
    build(str(tmp_path), release)
  records = read_records(build(str(tmp_path), release, split="grouped"), "dicom_id")
  splits_of = {r["split"] for r in records.values() if r["patient_id"] == f"p{subject}".encode()}
  assert len(splits_of) == 1


def test_many_leaking_subjects_are_counted(tmp_path):
  release = str(tmp_path / "release")
  tables = fixture_trees.mimic_tables(16)
  leaking = {s: rows for s, rows in frontal_rows_by_subject(tables).items() if len(rows) >= 2}
  assert len(leaking) > mimic_cxr.MAX_LEAKS_NAMED
  moved = {rows[0]: {"split": "validate" if tables["split"][rows[0]]["split"] == "train"
                     else "train"} for rows in leaking.values()}
  fixture_trees.make_mimic_cxr(release, n_subjects=16, split_overrides=moved)
  with pytest.raises(ValueError) as error:
    build(str(tmp_path), release)
  text = str(error.value)
  assert f"images of {len(leaking)} subject(s) in more than one split" in text
  assert text.count("subject_id ") == mimic_cxr.MAX_LEAKS_NAMED
  assert f"and {len(leaking) - mimic_cxr.MAX_LEAKS_NAMED} more." in text
