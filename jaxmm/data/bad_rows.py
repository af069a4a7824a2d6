"""Accounting for bad rows of a manual release: a clear error, or a counted skip.

A row is bad when its image is missing or cannot be decoded, a category is outside the
release's vocabulary, an age is not a number or not an age (negative, infinite, above 150
years), an id repeats, and so on (`BadInput.kind` names the problem). A builder built with
`skip_bad_rows=False` (the default) stops with an error naming the CSV file, its line number
and the problem; with `skip_bad_rows=True` the row is left out, logged and counted by kind in
the dataset info, so a dataset is never silently shorter than its CSV.
"""
import collections
import dataclasses

from absl import logging

# Rows listed one by one in errors and in the dataset info (all of them are counted).
MAX_LISTED = 1000
MAX_IN_ERROR = 20
MAX_LOGGED = 20
SKIP_HINT = ("to leave such rows out (counted in the dataset info), build with the builder "
             "config skip_bad_rows=True, e.g. --config.data.builder_overrides.skip_bad_rows=True")


class BadInput(ValueError):
  """A problem with one row: `kind` (a short category such as "missing_image") and a message."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


class BadRowsError(ValueError):
  """Raised by a strict build: lists the bad rows (file, line, id, problem)."""


@dataclasses.dataclass(frozen=True)
class BadRow:
  """One bad row: where it is (CSV file and 1-based line, header = line 1) and what is wrong."""
  file: str
  line: int
  key: str
  kind: str
  message: str

  def describe(self) -> str:
    key = f" ({self.key})" if self.key else ""
    return f"{self.file} line {self.line}{key}: {self.message}"


class BadRowLog:
  """Collects bad rows of one build; `check()` raises when the build is strict."""

  def __init__(self, dataset: str, strict: bool):
    self.dataset = dataset
    self.strict = strict
    self.rows: list[BadRow] = []

  def add(self, file: str, line: int, key: str, problem: BadInput) -> None:
    """Records a bad row (logged as skipped unless the build is strict)."""
    row = BadRow(file, int(line), key, problem.kind, str(problem))
    self.rows.append(row)
    if not self.strict and len(self.rows) <= MAX_LOGGED:
      logging.warning("%s: skipping %s", self.dataset, row.describe())

  def check(self, nothing_left: str = "") -> None:
    """Raises BadRowsError listing the bad rows if the build is strict and there are any.

    `nothing_left` names what would be empty without them (a CSV file, "split 'test'"):
    leaving bad rows out cannot help then, and the error says so instead of suggesting
    skip_bad_rows.
    """
    if not self.strict or not self.rows:
      return
    listed = "\n  ".join(r.describe() for r in self.rows[:MAX_IN_ERROR])
    more = len(self.rows) - MAX_IN_ERROR
    more = f"\n  ... and {more} more" if more > 0 else ""
    advice = (f"Without them no row of {nothing_left} is left, so skip_bad_rows=True would "
              f"not help: fix them (is the release laid out as expected?)." if nothing_left
              else f"Fix them, or {SKIP_HINT}.")
    raise BadRowsError(f"{self.dataset}: {len(self.rows)} bad row(s) in the manual download:\n"
                       f"  {listed}{more}\n{advice}")

  def summary(self) -> dict:
    """{"count", "by_kind": {kind: count}, "rows": [first MAX_LISTED rows as dicts]}."""
    return {"count": len(self.rows),
            "by_kind": dict(sorted(collections.Counter(r.kind for r in self.rows).items())),
            "rows": [dataclasses.asdict(r) for r in self.rows[:MAX_LISTED]]}
