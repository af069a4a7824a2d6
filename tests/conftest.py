"""Shared fixtures: one data directory per test session, smoke configs; one JAX compilation
cache per session."""
import functools
import os
import shutil
import tempfile

# Many tests compile the same programs (the smoke configs' steps, in this process and in the
# subprocesses of the CLI, preemption, sweep and multi-process tests); compilation is most of
# their time on a 2-core CPU. One persistent cache per session, empty at the start, serves
# them all; set before JAX is imported (it reads these once), and inherited by subprocesses.
# A JAX_COMPILATION_CACHE_DIR set by the user (or by a test, for its subprocesses) wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  SESSION_CACHE_DIR = tempfile.mkdtemp(prefix="jaxmm-test-jax-cache-")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=SESSION_CACHE_DIR,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
else:
  SESSION_CACHE_DIR = None

# Compiling is most of the suite's time on a 2-core CPU, and most of compiling is LLVM
# optimising the generated code: at level 0 a ResNet init compiles in 1.8 s instead of 8.6 s
# and the suite runs about a third faster. Tests check values, not speed, and XLA's HLO passes
# (fusion, buffer assignment) run as at the default level. The main-job test
# (test_workflow.py) and the benchmarks' own subprocesses run at the default level, as users
# do; `xla_flags()` gives a subprocess the session's flags plus its own.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
if FAST_COMPILE_FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}".strip()


def xla_flags(*extra: str, default_optimization: bool = False) -> str:
  """$XLA_FLAGS for a test's subprocess: the session's plus `extra`; without the session's
  FAST_COMPILE_FLAG when `default_optimization` (code compiled as users get it)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f]
  if default_optimization:
    flags = [f for f in flags if f != FAST_COMPILE_FLAG]
  return " ".join(flags + list(extra))

import pytest  # noqa: E402

from jaxmm.train import config_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")


def pytest_unconfigure(config):
  if SESSION_CACHE_DIR:
    shutil.rmtree(SESSION_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """Datasets built once per session (tiny smoke builder configs), shared by the tests."""
  path = str(tmp_path_factory.mktemp("datasets"))
  os.environ["JAXMM_DATA_DIR"] = path
  return path


def load_smoke_config(data_dir: str, name: str, arg: str = ""):
  """`configs/<name>.py:<arg>,smoke` on `data_dir`, no progress bars."""
  spec = os.path.join(CONFIG_DIR, f"{name}.py") + (f":{arg},smoke" if arg else ":smoke")
  config = config_lib.load_config_file(spec)
  config.data.data_dir = data_dir
  config.train.progress = False
  return config


@pytest.fixture
def smoke_config(data_dir):
  """Factory: load_smoke_config(name, arg) on the session data directory."""
  return functools.partial(load_smoke_config, data_dir)
