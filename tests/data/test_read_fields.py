"""pipeline.read_fields / saved_statistics.read_columns: the same columns as reading every
record at once, with memory bounded by a chunk of records, not by the decoded split."""
import tracemalloc

import numpy as np
import pytest

from jaxmm.data import builders
from jaxmm.data import pipeline
from jaxmm.data import saved_statistics

DERM_FIELDS = ("label", "age", "sex", "localization", "malignant", "image_id", "confounder")
CXR_FIELDS = ("label", "report", "patient_id", "age", "sex")


def read_all_records(source, fields) -> dict:
  """The pre-chunking read_fields / read_columns: every decoded record held at once."""
  decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
  rows = [source[i] for i in range(len(source))]
  return {f: np.array([decode(r[f]) for r in rows], dtype=object) for f in fields}


def assert_same_columns(got: dict, expected: dict) -> None:
  """Same fields, dtypes, shapes, and element by element the same type and value (repr: a
  NaN age equals a NaN age, np.int32(1) differs from 1)."""
  assert list(got) == list(expected)
  for f in expected:
    assert (got[f].dtype, got[f].shape) == (expected[f].dtype, expected[f].shape), f
    assert [repr(v) for v in got[f].ravel()] == [repr(v) for v in expected[f].ravel()], f


def peak_bytes(fn) -> int:
  """Peak traced Python allocation while `fn()` runs."""
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


@pytest.fixture(scope="module")
def derm(tmp_path_factory):
  return builders.prepare(builders.get_builder(
      "synthetic_derm", data_dir=str(tmp_path_factory.mktemp("derm")), num_examples=400,
      image_size=64))


@pytest.fixture(scope="module")
def cxr(tmp_path_factory):
  return builders.prepare(builders.get_builder(
      "synthetic_cxr", data_dir=str(tmp_path_factory.mktemp("cxr")), num_examples=60,
      image_size=16))


@pytest.mark.parametrize("chunk", [1, 7, saved_statistics.READ_CHUNK, 10_000])
def test_columns_equal_reading_every_record(derm, cxr, chunk):
  for builder, fields in ((derm, DERM_FIELDS), (cxr, CXR_FIELDS)):
    for split in ("train", "test"):
      source = builder.as_data_source(split)
      expected = read_all_records(source, fields)
      assert_same_columns(saved_statistics.read_columns(source, fields, chunk), expected)
  labels = saved_statistics.read_columns(cxr.as_data_source("train"), ("label",), chunk)["label"]
  assert labels.shape == (cxr.info.splits["train"].num_examples, 14)  # [N, 14], as before


def test_read_fields_is_read_columns(derm):
  source = derm.as_data_source("validation")
  expected = read_all_records(source, DERM_FIELDS)
  assert_same_columns(pipeline.read_fields(source, DERM_FIELDS), expected)
  empty = pipeline.read_fields([], ("label",))
  assert empty["label"].dtype == object and empty["label"].shape == (0,)


def test_memory_does_not_grow_with_the_decoded_split(derm):
  source = derm.as_data_source("train")
  n, record = len(source), source[0]
  image_bytes = sum(v.nbytes for v in record.values() if isinstance(v, np.ndarray))
  assert n * image_bytes > 4_000_000  # the split's pixels (image and masks), decoded
  peak = peak_bytes(lambda: pipeline.read_fields(source, ("label", "age")))
  assert peak < 0.25 * n * image_bytes, (peak, n, image_bytes)
  peak = peak_bytes(lambda: saved_statistics.read_columns(source, ("age",)))
  assert peak < 0.25 * n * image_bytes, (peak, n, image_bytes)


class ViewSource:
  """A random-access source decoding records whose label is a view into the record's buffer,
  as a decoder slicing one buffer would return: a kept view would keep the buffer alive."""

  def __init__(self, n: int, buffer_bytes: int):
    self.n, self.buffer_bytes = n, buffer_bytes

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    buffer = np.full(self.buffer_bytes // 4, i, np.int32)
    age = float("nan") if i % 5 == 0 else 20.0 + i
    return {"image": buffer[14:], "label": buffer[:14], "id": f"r{i}".encode(), "age": age}


def test_kept_values_do_not_hold_their_records():
  source = ViewSource(200, 100_000)
  columns = saved_statistics.read_columns(source, ("label", "id", "age"))
  assert_same_columns(columns, read_all_records(source, ("label", "id", "age")))
  assert columns["label"].shape == (200, 14) and columns["label"][7, 3] == 7
  assert columns["id"][7] == "r7" and np.isnan(columns["age"][5]) and columns["age"][6] == 26
  peak = peak_bytes(lambda: saved_statistics.read_columns(source, ("label", "id")))
  assert peak < 0.1 * source.n * source.buffer_bytes, peak
