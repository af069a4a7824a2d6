"""Helpers shared by the builder tests."""
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


@pytest.fixture(scope="session")
def read_records():
  return records_by_id
