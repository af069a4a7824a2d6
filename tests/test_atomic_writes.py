"""Every file jaxmm writes is written atomically (jaxmm/data/atomic.py).

A scan of jaxmm/**/*.py fails when a raw write call (open for writing, savefig, np.save, ...)
appears outside atomic.py and its listed exceptions, so the rule stays true; behavioural tests
show that a write failing half-way leaves the previous file and no temporary behind.
"""
import ast
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.artist  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxmm.data import atomic  # noqa: E402
from jaxmm.report import saliency_figures  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Methods that write a file whatever their receiver, and module functions that do.
WRITE_METHODS = {"savefig", "save", "tofile", "to_csv", "to_parquet", "to_pickle",
                 "write_text", "write_bytes", "imsave", "imwrite"}
WRITE_FUNCTIONS = {("np", "save"), ("np", "savez"), ("np", "savez_compressed"),
                   ("np", "savetxt"), ("json", "dump"), ("pickle", "dump"), ("shutil", "copy"),
                   ("shutil", "copy2"), ("shutil", "copyfile"), ("shutil", "copytree"),
                   ("shutil", "move")}
MODE = re.compile(r"^[rwaxbtU+]+$")


def _open_mode(call: ast.Call) -> str | None:
  """The mode string of an open() / x.open() call (None: not a call to open)."""
  func = call.func
  name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
  if name != "open":
    return None
  for keyword in call.keywords:
    if keyword.arg == "mode":
      return keyword.value.value if isinstance(keyword.value, ast.Constant) else "?"
  candidates = call.args[1:2] if isinstance(func, ast.Name) else call.args[:2]
  for arg in candidates:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and MODE.match(arg.value):
      return arg.value
    if isinstance(func, ast.Name):
      return "?"  # open(path, some_variable)
  return "r"


def raw_writes(source: str) -> list[tuple[int, str]]:
  """(line, call) of every raw write in Python `source`: "open:<mode>" for open() with a
  writing mode, ".name" for a writing method, "module.name" for a writing function."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Call):
      continue
    mode = _open_mode(node)
    if mode is not None:
      if mode == "?" or set(mode) & set("wax+"):
        found.append((node.lineno, f"open:{mode.strip('bt') or mode}"))
      continue
    func = node.func
    if not isinstance(func, ast.Attribute):
      continue
    owner = func.value.id if isinstance(func.value, ast.Name) else None
    if owner in ("np", "numpy", "json", "pickle", "shutil"):
      if (owner.replace("numpy", "np"), func.attr) in WRITE_FUNCTIONS:
        found.append((node.lineno, f"{owner}.{func.attr}"))
    elif func.attr in WRITE_METHODS:
      found.append((node.lineno, f".{func.attr}"))
  return found


def test_the_scan_sees_every_kind_of_raw_write():
  source = ("open(p, 'w')\nopen(p)\nopen(p, 'rb')\nopen(p, mode='ab')\ngzip.open(p, 'wt')\n"
            "Path(p).open('w')\nImage.open(p)\nfig.savefig(p)\nnp.save(p, x)\n"
            "json.dump(d, f)\njson.dumps(d)\nshutil.copy(a, b)\ndf.to_csv(p)\nimg.save(p)\n"
            "open(p, m)\nwrite_text_atomic(p, t)\n")
  assert raw_writes(source) == [
      (1, "open:w"), (4, "open:a"), (5, "open:w"), (6, "open:w"), (8, ".savefig"),
      (9, "np.save"), (10, "json.dump"), (12, "shutil.copy"), (13, ".to_csv"), (14, ".save"),
      (15, "open:?")]


def test_jaxmm_writes_files_only_through_atomic_helpers():
  allowed = set(atomic.RAW_WRITE_EXCEPTIONS)
  found, used = [], set()
  for folder, _, files in os.walk(os.path.join(REPO, "jaxmm")):
    for name in sorted(files):
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path, REPO).replace(os.sep, "/")
      if module == "jaxmm/data/atomic.py":
        continue
      with open(path, encoding="utf-8") as f:
        source = f.read()
      for line, call in raw_writes(source):
        if (module, call) in allowed:
          used.add((module, call))
        else:
          found.append(f"{module}:{line}: {call}")
  assert not found, ("raw file writes outside jaxmm/data/atomic.py (write through its helpers: "
                     "write_text_atomic, write_bytes_atomic, write_npz_atomic, "
                     "write_figure_atomic, atomic_path; or list a third-party / append-only "
                     "write in atomic.RAW_WRITE_EXCEPTIONS):\n  " + "\n  ".join(found))
  assert used == allowed, f"exceptions no longer needed: {sorted(allowed - used)}"


class _FailingArtist(matplotlib.artist.Artist):
  """Raises while the figure is drawn, i.e. half-way through savefig."""

  def draw(self, renderer):
    raise RuntimeError("drawing failed")


def _leftovers(folder) -> list:
  return sorted(n for n in os.listdir(folder) if ".tmp" in n)


def test_a_figure_failing_while_drawn_leaves_the_previous_file(tmp_path):
  path = str(tmp_path / "figures" / "panel.png")
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  saliency_figures.save_figure(fig, path)
  with open(path, "rb") as f:
    before = f.read()
  assert before.startswith(b"\x89PNG")
  fig, ax = plt.subplots()
  ax.plot([0, 1], [0, 1])
  fig.add_artist(_FailingArtist())
  with pytest.raises(RuntimeError, match="drawing failed"):
    saliency_figures.save_figure(fig, path)
  with open(path, "rb") as f:
    assert f.read() == before
  assert _leftovers(tmp_path / "figures") == []
  assert fig.number not in plt.get_fignums()  # closed although it failed


def test_a_write_failing_on_disk_leaves_the_previous_file_and_no_temporary(tmp_path,
                                                                           monkeypatch):
  path = str(tmp_path / "table.csv")
  atomic.write_text_atomic(path, "a,b\n1,2\n")

  def disk_full(fd):
    raise OSError(28, "No space left on device")

  with monkeypatch.context() as patch:
    patch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
      atomic.write_text_atomic(path, "a,b\n" + "3,4\n" * 1000)
    with pytest.raises(OSError, match="No space left"):
      atomic.write_npz_atomic(str(tmp_path / "maps.npz"), {"x": np.ones(3)})
    fig = plt.figure()
    with pytest.raises(OSError, match="No space left"):
      saliency_figures.save_figure(fig, str(tmp_path / "figure.png"))
  with open(path) as f:
    assert f.read() == "a,b\n1,2\n"
  assert sorted(os.listdir(tmp_path)) == ["table.csv"]


def test_atomic_path_replaces_on_success_and_cleans_up_on_failure(tmp_path):
  path = str(tmp_path / "sub" / "weights.npy")
  with atomic.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:  # a writer that wants a file
      np.save(f, np.arange(3))
  np.testing.assert_array_equal(np.load(path), np.arange(3))
  with pytest.raises(ValueError, match="half-way"):
    with atomic.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"partial")
      raise ValueError("half-way")
  np.testing.assert_array_equal(np.load(path), np.arange(3))
  assert os.listdir(tmp_path / "sub") == ["weights.npy"]
