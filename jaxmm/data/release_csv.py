"""Reading the CSV tables of an official release, with the line number of every row.

Line numbers are those of the file as a text editor shows them (the header is line 1), so a
message such as "HAM10000_metadata.csv line 17" points at the row to fix. A missing column is
always an error (the whole file is in the wrong format); a row with the wrong number of fields
is reported as a bad row through `Row.problem`. A file that cannot be read as a UTF-8 CSV
(undecodable bytes, a field over the csv module's size limit, e.g. after an unclosed quote)
raises ValueError naming the file and the line. A table released gzipped (PhysioNet ships
`mimic-cxr-2.0.0-*.csv.gz`) is read as is when the plain `.csv` is absent.
"""
import csv
import dataclasses
import gzip
import os
from typing import Iterator, Sequence


@dataclasses.dataclass(frozen=True)
class Row:
  """One data row: 1-based line number, {column: stripped text}, and a problem or None."""
  line: int
  fields: dict
  problem: str | None = None


def check_columns(path: str, header: Sequence[str], required: Sequence[str]) -> None:
  """ValueError naming the file, the missing columns and the header found."""
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}; its header is {list(header)}, the "
                     f"official release has the columns {list(required)}")


def existing_path(path: str) -> str | None:
  """`path`, else `path.gz` when only the gzipped table exists, else None."""
  for candidate in (path, path + ".gz"):
    if os.path.isfile(candidate):
      return candidate
  return None


def _open_text(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
  return open(path, newline="", encoding="utf-8-sig")


def read_rows(path: str, required: Sequence[str]) -> Iterator[Row]:
  """Rows of the CSV at `path` (or `path.gz`) that must have the columns `required` (others
  are kept too)."""
  found = existing_path(path)
  if found is None:
    raise FileNotFoundError(f"{path} not found")
  path = found
  with _open_text(path) as f:
    reader = csv.reader(f)
    records = _records(reader, path)
    header = [h.strip() for h in next(records, [])]
    check_columns(path, header, required)
    for values in records:
      if not values:
        continue  # blank line
      problem = None
      if len(values) != len(header):
        problem = f"has {len(values)} fields, the header has {len(header)}"
      fields = {name: value.strip() for name, value in zip(header, values)}
      fields.update({name: "" for name in header[len(values):]})
      yield Row(reader.line_num, fields, problem)


def _records(reader, path: str) -> Iterator[list]:
  """The reader's records; ValueError naming `path` and the line when the file is not CSV."""
  while True:
    try:
      values = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      hint = ("; is a quote left open? It makes the rest of the file one field"
              if "field limit" in str(e) else "")
      raise ValueError(f"{path} line {reader.line_num}: not readable as CSV ({e}){hint}") \
          from None
    except UnicodeDecodeError as e:
      raise ValueError(f"{path} line {undecodable_line(path)}: not UTF-8 text ({e.reason}); "
                       f"save the table as UTF-8") from None
    yield values


def undecodable_line(path: str) -> int:
  """1-based line of the first byte of `path` (gzipped or not) that is not UTF-8 (0: none)."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    head = data[:e.start]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1
  return 0
