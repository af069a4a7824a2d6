"""Atomic writes leave the complete new file and no temporary behind, and the next write of a
path removes the temporaries that killed writers left."""
import os
import signal
import socket
import subprocess
import sys
import time

from jaxmm.data import atomic
from jaxmm.data.atomic import write_text_atomic


def test_write_replaces_whole_file_and_cleans_up(tmp_path):
  path = str(tmp_path / "sub" / "table.csv")
  write_text_atomic(path, "a,b\n1,2\n")
  write_text_atomic(path, "a\n")
  assert open(path).read() == "a\n"
  assert os.listdir(tmp_path / "sub") == ["table.csv"]


KILLED_MID_WRITE = """
import os, signal, sys
from jaxmm.data import atomic
with atomic.atomic_path(sys.argv[1]) as tmp:
  with open(tmp, "wb") as f:
    f.write(b"half of a new file")
  os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
  """SIGKILL (or SIGTERM with no handler) skips the cleanup: the temporary stayed for good,
  also after a later successful write of the same path (a large shard per preemption)."""
  path = str(tmp_path / "shard_00000.npz")
  write_text_atomic(path, "old")
  done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, path], check=False)
  assert done.returncode == -signal.SIGKILL
  left = [n for n in os.listdir(tmp_path) if ".tmp-" in n]
  assert len(left) == 1 and open(path).read() == "old"
  write_text_atomic(path, "new")
  assert os.listdir(tmp_path) == ["shard_00000.npz"] and open(path).read() == "new"
  assert socket.gethostname() in left[0]  # a shared folder tells hosts' temporaries apart


def test_only_dead_writers_temporaries_are_removed(tmp_path):
  """This host's temporaries go when their process is gone; another host's (its process
  cannot be checked from here) and a live writer's stay, unless a day old; files of other
  names are not touched."""
  path = str(tmp_path / "table.csv")
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  dead_pid, here = int(gone.stdout), socket.gethostname()
  names = {"dead_here": f".tmp-{here}-{dead_pid}-1",
           "alive_here": f".tmp-{here}-{os.getpid()}-1",
           "other_host": f".tmp-other-host-{dead_pid}-1", "old_other_host": ".tmp-elsewhere-7-1",
           "unnamed_host": f".tmp-{dead_pid}-1", "not_ours": ".tmp-999"}
  for name in names.values():
    open(path + name, "w").close()
  two_days_ago = time.time() - 2 * 24 * 3600
  os.utime(path + names["old_other_host"], (two_days_ago, two_days_ago))
  write_text_atomic(path, "a\n")
  left = sorted(n[len("table.csv"):] for n in os.listdir(tmp_path) if n != "table.csv")
  assert left == sorted(names[k] for k in ("alive_here", "other_host", "unnamed_host",
                                           "not_ours"))
  assert atomic.is_stale_temporary(names["other_host"], 25 * 3600, here)
