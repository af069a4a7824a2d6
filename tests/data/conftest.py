"""Helpers shared by the builder tests."""
import numpy as np
import pytest


def records_by_id(builder, id_field: str) -> dict:
  """id -> record (with its "split") of every split of a prepared builder."""
  out = {}
  for split in ("train", "validation", "test"):
    source = builder.as_data_source(split)
    for i in range(len(source)):
      record = dict(source[i])
      record["split"] = split
      out[record[id_field].decode()] = record
  return out


def assert_same_records(records: dict, again: dict) -> None:
  """Two builds hold the same ids and byte-identical fields (splits included)."""
  assert again.keys() == records.keys()
  for key, record in records.items():
    for field, value in record.items():
      np.testing.assert_array_equal(again[key][field], value, err_msg=f"{key}/{field}")


@pytest.fixture(scope="session")
def read_records():
  return records_by_id


@pytest.fixture(scope="session")
def same_records():
  return assert_same_records
