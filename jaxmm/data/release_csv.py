"""Reading the CSV tables of an official release, with the line number of every row.

Line numbers are those of the file as a text editor shows them (the header is line 1), so a
message such as "HAM10000_metadata.csv line 17" points at the row to fix. A missing or repeated
column is always an error (the whole file is in the wrong format); a row with the wrong number
of fields is reported as a bad row through `Row.problem`. A line that is blank or holds only
whitespace is not a row (editors and exports leave such lines at the end of a table). No field
of the release tables (HAM10000 metadata, ISIC 2020 ground truth, MIMIC-CXR metadata / chexpert
/ split) holds a line break, so a quoted field that runs over several lines is a stray quote
that swallowed the rows after it: each row of the file it swallowed is returned as a bad row,
so the rows of a table always add up. A file that cannot be read as a UTF-8 CSV (undecodable
bytes; a field over the csv module's size limit, e.g. after an unclosed quote; a truncated or
corrupt gzip stream) raises ValueError naming the file and the line. A table released gzipped
(PhysioNet ships `mimic-cxr-2.0.0-*.csv.gz`) is read as is when the plain `.csv` is absent.
"""
import csv
import dataclasses
import gzip
import os
import zlib
from typing import Iterator, Sequence

# What reading a broken gzip stream raises (gzip.BadGzipFile is an OSError).
GZIP_ERRORS = (OSError, EOFError, zlib.error)


@dataclasses.dataclass(frozen=True)
class Row:
  """One data row: 1-based line number, {column: stripped text}, a problem or None, and the
  bad-row kind of the problem ("malformed_row": wrong field count, "stray_quote": lost to a
  quoted field over several lines)."""
  line: int
  fields: dict
  problem: str | None = None
  kind: str = "malformed_row"


def check_columns(path: str, header: Sequence[str], required: Sequence[str]) -> None:
  """ValueError naming the file and the missing or repeated columns, and the header found.

  A repeated name is an error because the row's dict would keep only its last copy, silently
  (e.g. a second "dx" column would relabel every image). Blank names may repeat: they name no
  column that is read.
  """
  missing = [c for c in required if c not in header]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}; its header is {list(header)}, the "
                     f"official release has the columns {list(required)}")
  repeated = sorted({c for c in header if c and list(header).count(c) > 1})
  if repeated:
    raise ValueError(f"{path}: column(s) {repeated} repeat in its header {list(header)}; "
                     f"each column must appear once, or which copy holds the values is unclear")


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
  are kept too); a record over several lines gives one bad row per line (`swallowed_rows`)."""
  found = existing_path(path)
  if found is None:
    raise FileNotFoundError(f"{path} not found")
  path = found
  with _open_text(path) as f:
    records = _records(f, path)
    _, lines, header = next(records, (1, [""], []))
    if len(lines) > 1:
      raise ValueError(f"{path}: its header runs over lines 1-{len(lines)}: a quote in it is "
                       f"stray (no column name of the release holds a line break)")
    header = [h.strip() for h in header]
    check_columns(path, header, required)
    for start, lines, values in records:
      if len(lines) > 1:
        yield from swallowed_rows(header, start, lines)
      elif lines[0].strip():  # else a blank or whitespace-only line: not a row
        yield _row(header, start, values)


def _row(header: list, line: int, values: list, problem: str | None = None,
         kind: str = "malformed_row") -> Row:
  """A Row of `values` under `header` (missing fields blank); a wrong field count is its
  problem unless `problem` says something else."""
  if problem is None and len(values) != len(header):
    problem = f"has {len(values)} fields, the header has {len(header)}"
  fields = {name: value.strip() for name, value in zip(header, values)}
  fields.update({name: "" for name in header[len(values):]})
  return Row(line, fields, problem, kind)


def swallowed_rows(header: list, start: int, lines: list) -> Iterator[Row]:
  """Bad rows of a record read over the physical `lines` from line `start` on: one per line
  that is not blank (nor whitespace only), each with the fields of its own line (so its id can
  be named). The first says how many rows the stray quote swallowed; together they count every
  row lost."""
  end = start + len(lines) - 1
  rows = [(start + i, text) for i, text in enumerate(lines) if text.strip()]
  for line, text in rows:
    if line == start:
      problem = (f"a quote on line {start} opens a field that runs to line {end}, so lines "
                 f"{start}-{end} ({len(rows)} rows) read as one record and are all lost; no "
                 f"field of a release table holds a line break: remove the stray quote")
    else:
      problem = (f"swallowed by the stray quote on line {start} (lines {start}-{end} read as "
                 f"one record)")
    yield _row(header, line, _fields_of_line(text), problem, "stray_quote")


def _fields_of_line(text: str) -> list:
  """The fields of one physical line read on its own (best effort: [] if it is not CSV)."""
  try:
    return next(csv.reader([text]), [])
  except csv.Error:
    return []


class _LineTap:
  """The lines of a text file, keeping in `lines` those read since `lines` was reset."""

  def __init__(self, f):
    self.f = f
    self.lines = []

  def __iter__(self):
    return self

  def __next__(self) -> str:
    text = next(self.f)
    self.lines.append(text)
    return text


def _records(f, path: str) -> Iterator[tuple[int, list, list]]:
  """(first line, physical lines, values) of each record of the open file `f`; ValueError
  naming `path` and the line when the file is not CSV, not UTF-8 or a broken gzip stream."""
  tap = _LineTap(f)
  reader = csv.reader(tap)
  start = 1
  while True:
    tap.lines = []
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
    except GZIP_ERRORS as e:
      if not path.endswith(".gz"):
        raise
      raise not_gzip_error(path, start + len(tap.lines), e) from None
    yield start, tap.lines, values
    start += len(tap.lines)


def not_gzip_error(path: str, line: int, error: Exception) -> ValueError:
  """The error for a `.gz` table whose stream breaks at (text) `line`."""
  return ValueError(f"{path} line {line}: not readable as gzip (truncated or corrupt download: "
                    f"{error}); download it again")


def undecodable_line(path: str) -> int:
  """1-based line of the first byte of `path` (gzipped or not) that is not UTF-8 (0: none);
  ValueError naming the file when it is a broken gzip stream."""
  data = _read_bytes(path)
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    return _line_of(data, e.start)
  return 0


def _read_bytes(path: str) -> bytes:
  """The bytes of `path`, decompressed if it ends in .gz (ValueError if the stream breaks)."""
  if not path.endswith(".gz"):
    with open(path, "rb") as f:
      return f.read()
  chunks = []
  with gzip.open(path, "rb") as f:
    try:
      while chunk := f.read(1 << 20):
        chunks.append(chunk)
    except GZIP_ERRORS as e:
      data = b"".join(chunks)
      raise not_gzip_error(path, _line_of(data, len(data)), e) from None
  return b"".join(chunks)


def _line_of(data: bytes, offset: int) -> int:
  """1-based line of byte `offset` of `data` (\\n, \\r\\n and \\r end a line)."""
  head = data[:offset]
  return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1
