"""Property-based tests (hypothesis) of the manual-release CSV parsers and the report reader.

Random tables (missing and extra fields, extra columns, odd and unicode strings, blanks,
numbers out of range, repeated ids) must give, row by row, either a valid record or the bad-row
policy's error (jaxmm.data.bad_rows): a `BadRow` naming the CSV file and the row's line, of a
documented kind; never a crash of another kind, never a row lost from the counts. A file that
is not CSV at all raises ValueError naming the file and line.
"""
import csv
import io
import math
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxmm.data import bad_rows
from jaxmm.data import ham10000
from jaxmm.data import isic2020
from jaxmm.data import manual_base
from jaxmm.data import metadata
from jaxmm.data import mimic_cxr
from jaxmm.data import release_csv
from jaxmm.data.cxr_reports import CHEXPERT_LABELS

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROW_KINDS = {"malformed_row", "stray_quote", "missing_id", "unknown_category",
             "non_numeric_age", "age_out_of_range", "missing_image", "missing_mask",
             "duplicate_id", "label_mismatch", "no_labels", "no_split", "missing_report",
             "id_mismatch"}
ODD = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", " ", "nan", "NaN", "None", "null", "-1", "1e400", "-inf", "200", "45x",
                     '"', '""', ",", "\n", "\r", "\r\n", " ,\" ", "é", "Ünïcode", "\u2028",
                     "\x00", "\ufeff", "０", "²", "١٢", "İ", "0x10", "1_0", "  MALE  "]))


def with_odd(valid: st.SearchStrategy) -> st.SearchStrategy:
  return st.one_of(valid, valid, ODD)


def write_table(path: str, header: list, rows: list, bom: bool = False) -> list[list]:
  """Writes a CSV (Excel's \\r\\n line ends) and returns, per row, the lines of the file it
  takes that are rows of the file (not blank nor only whitespace), as read_rows reports them
  (header = line 1).
  A quoted line break inside a field spreads a row over several lines: read_rows gives each
  of them as a bad row (no field of a release table spans lines: a stray quote)."""
  text, spans, line = "\ufeff" if bom else "", [], 1
  for record in [header] + rows:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(record)
    text += buffer.getvalue()
    physical = re.findall(r"([^\r\n]*)(?:\r\n|\r|\n)", buffer.getvalue())
    spans.append([line + i for i, content in enumerate(physical) if content.strip()])
    line += len(physical)
  with open(path, "w", newline="", encoding="utf-8") as f:
    f.write(text)
  return spans[1:]


def flat(spans: list[list]) -> list:
  return [line for span in spans for line in span]


@st.composite
def table_rows(draw, columns: tuple, values: dict, max_rows: int = 8):
  """(header, rows as written, rows as {column: value}, clean flags): the header is `columns`
  shuffled plus maybe an extra column; a clean row has every field from `values`, the others
  may hold odd strings and too few or too many fields (never none: that is a blank line)."""
  header = list(draw(st.permutations(columns)))
  if draw(st.booleans()):
    header.insert(draw(st.integers(0, len(header))), "extra_column")
  written, named, clean = [], [], []
  for _ in range(draw(st.integers(1, max_rows))):
    is_clean = draw(st.booleans())
    row = {c: draw(values[c] if is_clean or c not in values else with_odd(values[c]))
           for c in columns}
    row["extra_column"] = draw(ODD)
    fields = [row[c] for c in header]
    if not is_clean and draw(st.integers(0, 4)) == 0:
      size = draw(st.integers(1, len(header) + 2))
      fields = (fields + [draw(ODD) for _ in range(2)])[:size]
    written.append(fields)
    named.append(row)
    clean.append(is_clean)
  return header, written, named, clean


def check_bad_rows(log: bad_rows.BadRowLog, file: str, spans: list[list]) -> None:
  """Every bad row names `file`, one of the table's lines and a documented kind, and every
  line of a row spread over several lines is a "stray_quote" bad row; a strict build's error
  lists the first of them by file and line."""
  for row in log.rows:
    assert row.file == file and row.line in flat(spans) and row.kind in ROW_KINDS, row
    assert row.message and f"{file} line {row.line}" in row.describe()
  stray = {row.line for row in log.rows if row.kind == "stray_quote"}
  assert stray == set(flat(span for span in spans if len(span) > 1)), (stray, spans)
  log.strict = True
  if log.rows:
    with pytest.raises(bad_rows.BadRowsError) as error:
      log.check()
    assert f"{file} line {log.rows[0].line}" in str(error.value)
  else:
    log.check()


def assert_age(age: float) -> None:
  assert math.isnan(age) or 0 <= age <= metadata.MAX_AGE, age


# A number as the release tables write one (ASCII only: not "4_5", "４５" or "١٢").
ASCII_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# Stands for an image the first pass only lists and stats (never decoded): not empty, since an
# empty file is a bad row of the first pass.
STAND_IN = b"stand-in: not decoded by read_entries"


# --------------------------------------------------------------------------- read_rows

@SETTINGS
@given(st.data())
def test_read_rows_returns_every_row_with_its_line_and_problem(tmp_path_factory, data):
  path = str(tmp_path_factory.mktemp("csv") / "t.csv")
  columns = ("a", "b", "c")
  header, written, _, _ = data.draw(table_rows(columns, {c: ODD for c in columns}))
  spans = write_table(path, header, written, bom=data.draw(st.booleans()))
  rows = list(release_csv.read_rows(path, ("c", "a")))
  assert [r.line for r in rows] == flat(spans)
  by_line = {r.line: r for r in rows}
  for span, fields in zip(spans, written):
    if not span:  # a row written as a line of only whitespace: not a row
      continue
    if len(span) > 1:  # a line break in a field: every line of the row is a bad row
      assert all(by_line[line].kind == "stray_quote" for line in span)
      assert by_line[span[0]].problem.startswith(
          f"a quote on line {span[0]} opens a field that runs to line {span[-1]}")
      continue
    row = by_line[span[0]]
    expected = {h: (fields[i].strip() if i < len(fields) else "") for i, h in enumerate(header)}
    assert row.fields == expected
    assert (row.problem is None) == (len(fields) == len(header))


@SETTINGS
@given(head=st.sampled_from([b"a,b\r\n", b"\xef\xbb\xbfa,b\n", b"b,c\n", b""]),
       body=st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                      st.sampled_from([b'1,"2\n3,4\n', b"1,\xe9\n", b"x,y\r\n\xff\xfe",
                                       b'"' + b"z" * 140000])))
def test_read_rows_of_any_bytes_give_rows_or_an_error_naming_file_and_line(tmp_path_factory,
                                                                          head, body):
  path = str(tmp_path_factory.mktemp("csv") / "t.csv")
  with open(path, "wb") as f:
    f.write(head + body)
  try:
    rows = list(release_csv.read_rows(path, ("a",)))
  except ValueError as error:
    message = str(error)
    assert re.match(re.escape(path) + r": (missing column|column\(s\) .* repeat in its "
                    r"header|its header runs over lines)", message) or re.match(
        re.escape(path) + r" line \d+: not (readable as CSV|UTF-8 text)", message), message
    return
  lines = [r.line for r in rows]
  assert lines == sorted(set(lines)) and all(line >= 2 for line in lines)
  assert all(set(r.fields) >= {"a"} and all(isinstance(v, str) for v in r.fields.values())
             for r in rows)


def test_undecodable_bytes_are_named_by_line(tmp_path):
  path = str(tmp_path / "t.csv")
  with open(path, "wb") as f:
    f.write(b"a,b\r\n1,2\r\n\"x\ry\",3\n4,caf\xe9\n")
  with pytest.raises(ValueError, match=r"t.csv line 5: not UTF-8 text \(invalid continuation "
                                       r"byte\); save the table as UTF-8"):
    list(release_csv.read_rows(path, ("a",)))


# --------------------------------------------------------------------------- HAM10000

HAM_IDS = tuple(f"ISIC_{i:07d}" for i in range(6))  # images 0..4 exist, 5 does not
HAM_VALUES = {
    "lesion_id": st.sampled_from(["HAM_0000001", "HAM_0000002", "HAM_0000003"]),
    "image_id": st.sampled_from(HAM_IDS),
    "dx": st.sampled_from(ham10000.CLASS_NAMES + (" MEL ",)),
    "dx_type": st.sampled_from(metadata.DX_TYPES + ("", "unknown", "Histo")),
    "age": st.sampled_from(["", "0", "45", "62.5", "150", "nan", " 80 "]),
    "sex": st.sampled_from(metadata.SEXES + ("", " Female")),
    "localization": st.sampled_from(metadata.LOCALIZATIONS + ("", "LOWER EXTREMITY")),
}


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ham"))
  for i, image_id in enumerate(HAM_IDS[:5]):
    folder = os.path.join(root, ham10000.IMAGE_DIRS[i % 2])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{image_id}.jpg"), "wb") as f:
      f.write(STAND_IN)
  os.makedirs(os.path.join(root, ham10000.IMAGE_DIRS[1]), exist_ok=True)
  return root, ham10000.Ham10000(data_dir=str(tmp_path_factory.mktemp("data")), manual_dir=root)


@SETTINGS
@given(st.data())
def test_ham10000_rows_are_valid_records_or_named_bad_rows(ham_root, data):
  root, builder = ham_root
  header, written, named, clean = data.draw(table_rows(ham10000.COLUMNS, HAM_VALUES))
  spans = write_table(os.path.join(root, ham10000.METADATA_CSV), header, written)
  log = bad_rows.BadRowLog("ham10000", strict=False)
  entries, build = builder.read_entries(root, log)
  assert build["csv_rows"] == len(flat(spans)) == len(entries) + len(log.rows)
  check_bad_rows(log, ham10000.METADATA_CSV, spans)
  by_line = {e.line: e for e in entries}
  assert len({e.key for e in entries}) == len(entries)
  for entry in entries:
    v = entry.fields
    assert v["image_id"] in HAM_IDS[:5] and v["lesion_id"] and entry.group == v["lesion_id"]
    assert v["dx"] in ham10000.CLASS_NAMES and entry.stratum == ham10000.CLASS_NAMES.index(v["dx"])
    assert v["sex"] in metadata.SEXES and v["localization"] in metadata.LOCALIZATIONS
    assert v["dx_type"] in ham10000.DX_TYPES
    assert_age(v["age"])
  accepted = set()
  for span, row, is_clean in zip(spans, named, clean):
    if not span:  # written as a line of only whitespace (never a clean row)
      continue
    if span[0] in by_line:
      accepted.add(by_line[span[0]].key)
    elif (is_clean and len(span) == 1 and row["image_id"] in HAM_IDS[:5]
          and row["image_id"] not in accepted):
      raise AssertionError(f"clean row {row} on line {span[0]} was refused: {log.rows}")


# --------------------------------------------------------------------------- ISIC 2020

ISIC_IDS = tuple(f"ISIC_{i:07d}" for i in range(100, 106))  # images of the first 5 exist
ISIC_VALUES = {
    "image_name": st.sampled_from(ISIC_IDS),
    "patient_id": st.sampled_from(["IP_0000001", "IP_0000002"]),
    "sex": st.sampled_from(metadata.SEXES + ("", "MALE")),
    "age_approx": st.sampled_from(["", "35.0", "90", "nan"]),
    "anatom_site_general_challenge": st.sampled_from(isic2020.SITES + ("", "Torso")),
    "diagnosis": st.sampled_from(["unknown", "nevus", "melanoma", ""]),
    "benign_malignant": st.just("benign"),
    "target": st.just("0"),
}


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("isic"))
  os.makedirs(os.path.join(root, isic2020.IMAGE_DIR))
  for image_id in ISIC_IDS[:5]:
    with open(os.path.join(root, isic2020.IMAGE_DIR, f"{image_id}.jpg"), "wb") as f:
      f.write(STAND_IN)
  return root, isic2020.Isic2020(data_dir=str(tmp_path_factory.mktemp("data")), manual_dir=root)


@SETTINGS
@given(st.data(), st.sampled_from([("benign", "0"), ("malignant", "1"), ("Malignant", "1")]))
def test_isic2020_rows_are_valid_records_or_named_bad_rows(isic_root, data, label):
  root, builder = isic_root
  values = dict(ISIC_VALUES, benign_malignant=st.just(label[0]), target=st.just(label[1]))
  header, written, named, clean = data.draw(table_rows(isic2020.COLUMNS, values))
  spans = write_table(os.path.join(root, isic2020.TRAIN_CSV), header, written)
  log = bad_rows.BadRowLog("isic2020", strict=False)
  entries, build = builder.read_entries(root, log)
  assert build["csv_rows"] == len(flat(spans)) == len(entries) + len(log.rows)
  check_bad_rows(log, isic2020.TRAIN_CSV, spans)
  assert len({e.key for e in entries}) == len(entries)
  for entry in entries:
    v = entry.fields
    assert v["image_id"] in ISIC_IDS[:5] and v["patient_id"] and os.path.exists(v["image_path"])
    assert v["label"] in (0, 1) and entry.stratum == v["label"]
    assert v["sex"] in metadata.SEXES and v["localization"] in isic2020.SITES
    assert_age(v["age"])
  by_line, accepted = {e.line: e for e in entries}, set()
  for span, row, is_clean in zip(spans, named, clean):
    if not span:  # written as a line of only whitespace (never a clean row)
      continue
    if span[0] in by_line:
      accepted.add(by_line[span[0]].key)
      assert by_line[span[0]].fields["label"] == int(row["target"])
    elif (is_clean and len(span) == 1 and row["image_name"] in ISIC_IDS[:5]
          and row["image_name"] not in accepted):
      raise AssertionError(f"clean row {row} on line {span[0]} was refused: {log.rows}")


# --------------------------------------------------------------------------- MIMIC-CXR

STUDIES = (("10000001", "50000001", "d1"), ("10000001", "50000002", "d2"),
           ("10000002", "50000003", "d3"), ("10000003", "50000004", "d4"))  # d4: no files
LABEL_TEXT = st.sampled_from(["1.0", "0.0", "-1.0", "", "nan", "1", "-1", " 0 "])
VIEW = st.sampled_from(["PA", "AP", "LATERAL", "ll", "pa", ""])


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("mimic"))
  for subject, study, dicom in STUDIES[:3]:
    folder = mimic_cxr.study_folder(root, subject, study)
    os.makedirs(folder)
    with open(os.path.join(folder, f"{dicom}.jpg"), "wb") as f:
      f.write(STAND_IN)
    with open(folder + ".txt", "w") as f:
      f.write("FINDINGS: clear.")
  data_dir = str(tmp_path_factory.mktemp("data"))
  return root, {split: mimic_cxr.MimicCxr(config=mimic_cxr.MimicCxrConfig(name=f"test_{split}",
                                                                          split=split),
                                          data_dir=data_dir, manual_dir=root)
                for split in mimic_cxr.SPLIT_CHOICES}


@st.composite
def mimic_tables(draw):
  """The three tables: a row per study / image, some fields odd, some rows repeated."""
  chexpert, split, metadata_rows = [], [], []
  for subject, study, dicom in STUDIES:
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
      chexpert.append([draw(with_odd(st.just(subject))), draw(with_odd(st.just(study)))] +
                      [draw(with_odd(LABEL_TEXT)) for _ in CHEXPERT_LABELS])
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
      split.append([draw(with_odd(st.just(dicom))), study, subject,
                    draw(with_odd(st.sampled_from(list(mimic_cxr.OFFICIAL_SPLITS))))])
    for _ in range(draw(st.sampled_from([1, 1, 0, 2]))):
      metadata_rows.append([draw(with_odd(st.just(dicom))), draw(with_odd(st.just(subject))),
                            draw(with_odd(st.just(study))), draw(with_odd(VIEW))])
  if draw(st.booleans()) and metadata_rows:
    metadata_rows[0] = metadata_rows[0][:draw(st.integers(1, 3))]
  return chexpert, split, draw(st.permutations(metadata_rows))


@SETTINGS
@given(mimic_tables(), st.sampled_from(["official", "grouped"]))
def test_mimic_cxr_rows_are_valid_records_or_named_bad_rows(mimic_root, tables, split):
  (root, builders), (chexpert, split_rows, metadata_rows) = mimic_root, tables
  chexpert_spans = write_table(os.path.join(root, mimic_cxr.CHEXPERT_CSV),
                               list(mimic_cxr.CHEXPERT_COLUMNS), chexpert)
  split_spans = write_table(os.path.join(root, mimic_cxr.SPLIT_CSV),
                            list(mimic_cxr.SPLIT_COLUMNS), split_rows)
  spans = write_table(os.path.join(root, mimic_cxr.METADATA_CSV),
                      list(mimic_cxr.METADATA_COLUMNS), metadata_rows)
  log = bad_rows.BadRowLog("mimic_cxr", strict=False)
  entries, build = builders[split].read_entries(root, log)
  filtered = sum(build["filtered"].values())
  assert build["csv_rows"] == len(flat(spans)) == len(entries) + len(log.rows) + filtered
  # A problem of the label or split table is reported on the metadata row, naming that
  # table's own line.
  for row in log.rows:
    other = re.match(r"(mimic-cxr-2\.0\.0-\w+\.csv) line (\d+): ", row.message)
    if other:
      table_spans = {mimic_cxr.CHEXPERT_CSV: chexpert_spans, mimic_cxr.SPLIT_CSV: split_spans}
      assert int(other.group(2)) in flat(table_spans[other.group(1)]), row
  check_bad_rows(log, mimic_cxr.METADATA_CSV, spans)
  assert len({e.key for e in entries}) == len(entries)
  known = {dicom: (subject, study) for subject, study, dicom in STUDIES[:3]}
  for entry in entries:
    v = entry.fields
    assert (v["subject_id"], v["study_id"]) == known[v["dicom_id"]]
    assert v["view_position"] in ("PA", "AP") and os.path.exists(v["report_path"])
    assert v["label"].shape == (14,) and v["label"].dtype == np.int32
    assert set(v["label"].tolist()) <= {1, 0, -1, -2}
    assert v["split"] in ((None,) if split == "grouped" else ("train", "validation", "test"))


@SETTINGS
@given(st.lists(LABEL_TEXT, min_size=14, max_size=14))
def test_chexpert_labels_parse_every_official_spelling(texts):
  labels = mimic_cxr.parse_labels(dict(zip(CHEXPERT_LABELS, [t.strip() for t in texts])))
  expected = [-2 if t.strip() in ("", "nan") else int(float(t)) for t in texts]
  assert labels.tolist() == expected


@pytest.mark.parametrize("text", ["\uff11.0", "1e0", "+1", "1.5", "0x1", "٠", "true"])
def test_chexpert_labels_in_other_spellings_are_a_named_bad_row(text):
  # float() reads all of the first four (and Arabic-Indic zero) as a label value.
  fields = dict.fromkeys(CHEXPERT_LABELS, "")
  fields["Edema"] = text
  with pytest.raises(bad_rows.BadInput, match=rf"Edema value {re.escape(repr(text))} is not"):
    mimic_cxr.parse_labels(fields)


@SETTINGS
@given(ODD)
def test_numeric_ids_are_ascii_digits_or_a_named_bad_row(text):
  try:
    assert mimic_cxr.digits("subject_id", text) == text and text.isascii() and text.isdigit()
  except bad_rows.BadInput as error:
    assert error.kind == "missing_id" and str(error) == f"subject_id {text!r} is not a number"


@SETTINGS
@given(st.one_of(ODD, st.floats().map(str), st.integers(-300, 300).map(str)))
def test_age_text_is_an_age_or_a_named_bad_row(text):
  try:
    assert_age(manual_base.parse_age("age_approx", text))
  except bad_rows.BadInput as error:
    if not ASCII_NUMBER.fullmatch(text.strip()):
      assert (error.kind, str(error)) == ("non_numeric_age",
                                          f"age_approx {text!r} is not a number")
    else:
      assert (error.kind, str(error)) == (
          "age_out_of_range", f"age_approx {text!r} is not an age in years (0 to 150)")
  else:
    stripped = text.strip()
    assert ASCII_NUMBER.fullmatch(stripped) or stripped.lower() in ("", "nan", "none", "null")


# --------------------------------------------------------------------------- reports

@SETTINGS
@given(st.one_of(st.text(max_size=200), st.binary(max_size=80),
                 st.builds("FINDINGS: {}\nIMPRESSION: {}".format, st.text(max_size=40),
                           st.text(max_size=40)).map(str)))
def test_report_files_give_clean_text_or_a_named_bad_row(tmp_path_factory, content):
  path = str(tmp_path_factory.mktemp("report") / "s5.txt")
  with open(path, "wb") as f:
    f.write(content.encode("utf-8") if isinstance(content, str) else content)
  try:
    text = mimic_cxr.read_report(path)
  except bad_rows.BadInput as error:
    assert error.kind in ("corrupt_report", "empty_report") and path in str(error)
    return
  assert re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", text), text
