"""Atomic writes leave the complete new file and no temporary behind."""
import os

from jaxmm.data.atomic import write_text_atomic


def test_write_replaces_whole_file_and_cleans_up(tmp_path):
  path = str(tmp_path / "sub" / "table.csv")
  write_text_atomic(path, "a,b\n1,2\n")
  write_text_atomic(path, "a\n")
  assert open(path).read() == "a\n"
  assert os.listdir(tmp_path / "sub") == ["table.csv"]
