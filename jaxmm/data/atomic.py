"""Atomic file writes: a temporary file in the same folder, then a rename.

Readers (and a run killed mid-write) see the old file or the new one, never half of one.
"""
import os


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through `path.tmp-<pid>` and `os.replace`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
