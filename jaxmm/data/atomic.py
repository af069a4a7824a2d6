"""Atomic file writes: a temporary file in the same folder, then a rename.

Readers (and a run killed mid-write) see the old file or the new one, never half of one.
"""
import io
import os
from typing import Mapping

import numpy as np


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes `data` to `path` through `path.tmp-<pid>` (flushed to disk) and `os.replace`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  write_bytes_atomic(path, text.encode("utf-8"))


def write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes the arrays as one .npz (no pickled objects), atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes_atomic(path, buffer.getvalue())
