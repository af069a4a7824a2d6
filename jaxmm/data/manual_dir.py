"""Where a credentialed dataset's manual download lives, and a check of its layout.

The real datasets cannot be downloaded by jaxmm: the user downloads the official release and
points the builder at it. The folder is, first match wins:

  1. `manual_dir` given to builders.get_builder / prepare / load (`config.data.manual_dir`);
  2. `$JAXMM_MANUAL_DIR/<dataset name>` when the environment variable is set;
  3. `<data_dir>/manual/<dataset name>`.

It is handed to tfds the standard way (`DownloadConfig(manual_dir=...)`, read back as
`dl_manager.manual_dir`). It is only read when a dataset is built; a prepared dataset is reused
without it.
"""
import dataclasses
import os

ENV_VAR = "JAXMM_MANUAL_DIR"


@dataclasses.dataclass(frozen=True)
class Layout:
  """The files of an official release that a builder reads.

  Attributes:
    dataset: the builder's name.
    required: (path relative to the manual dir, what it is) that must exist.
    optional: (path, what it is) read when present.
    source: where and how to get the release.
  """
  dataset: str
  required: tuple
  optional: tuple = ()
  source: str = ""

  def instructions(self) -> str:
    """Human-readable expected layout (also tfds' MANUAL_DOWNLOAD_INSTRUCTIONS)."""
    lines = [f"Put the official {self.dataset} release into the manual folder, as released:"]
    lines += [f"  {path:<48} {what}" for path, what in self.required]
    lines += [f"  {path:<48} (optional) {what}" for path, what in self.optional]
    if self.source:
      lines.append(f"Get it from {self.source}")
    lines.append(f"The folder is config.data.manual_dir, else ${ENV_VAR}/{self.dataset}, else "
                 f"<data_dir>/manual/{self.dataset}.")
    return "\n".join(lines)


def resolve(name: str, manual_dir: str | None, data_dir: str) -> str:
  """The manual folder of dataset `name` (see the module docstring for the order)."""
  if manual_dir:
    return os.path.abspath(os.path.expanduser(manual_dir))
  if os.environ.get(ENV_VAR):
    return os.path.join(os.path.abspath(os.path.expanduser(os.environ[ENV_VAR])), name)
  return os.path.join(os.path.abspath(os.path.expanduser(data_dir)), "manual", name)


def present(root: str, path: str) -> bool:
  """Whether `path` (a table may also be gzipped, `path.gz`) exists under `root`."""
  full = os.path.join(root, path.rstrip("/"))
  return os.path.exists(full) or (path.endswith(".csv") and os.path.exists(full + ".gz"))


def missing_files(root: str, layout: Layout) -> list[str]:
  """Required entries of `layout` absent from `root`."""
  return [path for path, _ in layout.required if not present(root, path)]


def check(root: str, layout: Layout) -> None:
  """FileNotFoundError naming the folder, what is missing there and the expected layout
  (NotADirectoryError when `root` is a file, e.g. the release's CSV instead of its folder)."""
  if os.path.exists(root) and not os.path.isdir(root):
    raise NotADirectoryError(f"{layout.dataset}: manual download folder {root} is a file, not a "
                             f"folder; give the folder the release was unzipped into.\n"
                             f"{layout.instructions()}")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{layout.dataset}: manual download folder {root} does not exist.\n"
                            f"{layout.instructions()}")
  missing = missing_files(root, layout)
  if missing:
    raise FileNotFoundError(f"{layout.dataset}: manual download folder {root} lacks {missing}.\n"
                            f"{layout.instructions()}")
