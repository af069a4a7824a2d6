"""Atomic file writes: a temporary file in the same folder, then a rename.

Readers (and a run killed mid-write) see the old file or the new one, never half of one; a
write that fails (an exception while drawing a figure, a full disk) leaves the old file as it
was and no temporary file behind. A writer killed mid-write (SIGKILL, or SIGTERM where no
handler runs) leaves its temporary; the next write of the same path removes it
(`remove_stale_temporaries`). Every table, figure, report and JSON file jaxmm writes goes
through this module; tests/test_atomic_writes.py fails when a raw write call appears elsewhere,
except for the writes listed in RAW_WRITE_EXCEPTIONS.
"""
import contextlib
import glob
import io
import os
import re
import socket
import threading
import time
from typing import Iterator, Mapping, Optional

import numpy as np

# (module path, call) -> why that raw write is allowed. Calls are named as
# tests/test_atomic_writes.py names them ("open:a" is open(..., "a"), ".save" a method).
RAW_WRITE_EXCEPTIONS = {
    ("jaxmm/train/writer.py", "open:a"):
        "metrics.jsonl is an append-only log, one flushed line per record; a resumed run "
        "rewrites it atomically without the lines past its checkpoint (truncate_after)",
    ("jaxmm/train/checkpointing.py", ".save"):
        "orbax CheckpointManager.save: orbax writes a step into a temporary folder and "
        "renames it when complete",
    ("jaxmm/train/loop.py", ".save"):
        "Checkpointer.save (jaxmm/train/checkpointing.py), i.e. the orbax save above",
}
# Not seen by that test because no jaxmm line writes them: the array_record files and
# dataset_info.json that tfds writes while a builder prepares a dataset (tfds finalises each
# split by renaming its temporary files).


# A temporary of another host is removed only once this old: its writer cannot be checked.
STALE_AFTER_SECONDS = 24 * 3600
# "<path>.tmp-HOST-PID-TID" (and "<path>.tmp-PID-TID", written before the host was named).
_TEMPORARY_SUFFIX = re.compile(r"\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-(?P<tid>\d+)")


def _temporary_path(path: str) -> str:
  # Host, pid and thread: two writers of the same path (threads, processes, hosts sharing the
  # filesystem) never share a temporary, and a leftover one names the process that wrote it.
  return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"


def process_alive(pid: int) -> bool:
  """Whether a process of this id runs on this host (one of another user counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def is_stale_temporary(suffix: str, age_seconds: float, host: str) -> bool:
  """Whether a temporary named `<path><suffix>` is a dead writer's: this host's (`host`) with
  no process of its pid, or any at least STALE_AFTER_SECONDS old (another host's, or one
  named without its host). Other names are never stale: they are not this module's."""
  match = _TEMPORARY_SUFFIX.fullmatch(suffix)
  if match is None:
    return False
  if age_seconds >= STALE_AFTER_SECONDS:
    return True
  return match["host"] == host and not process_alive(int(match["pid"]))


def remove_stale_temporaries(path: str, now: Optional[float] = None) -> list:
  """Removes the temporaries of `path` that killed writers left (is_stale_temporary); returns
  their paths. A live writer's, here or on another host sharing the folder, stays."""
  now = time.time() if now is None else now
  host, removed = socket.gethostname(), []
  for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
    with contextlib.suppress(FileNotFoundError):  # its writer, or another cleaner, was first
      if is_stale_temporary(tmp[len(path):], now - os.path.getmtime(tmp), host):
        os.remove(tmp)
        removed.append(tmp)
  return removed


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path` for a writer that wants a file name; on success
  the temporary replaces `path`, on an exception it is removed and `path` is left as it was."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  remove_stale_temporaries(path)
  tmp = _temporary_path(path)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file (flushed to disk) and `os.replace`."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  write_bytes_atomic(path, text.encode("utf-8"))


def write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes the arrays as one .npz (no pickled objects), atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes_atomic(path, buffer.getvalue())


def write_figure_atomic(fig, path: str, **savefig_kwargs) -> str:
  """Renders a matplotlib figure in memory (`fig.savefig(buffer, **savefig_kwargs)`, format
  from the kwargs or the file extension) and writes it to `path` atomically; returns `path`."""
  fmt = savefig_kwargs.pop("format", None) or os.path.splitext(path)[1].lstrip(".") or "png"
  buffer = io.BytesIO()
  fig.savefig(buffer, format=fmt, **savefig_kwargs)
  write_bytes_atomic(path, buffer.getvalue())
  return path
