"""Headless Chromium for the report's browser test (Playwright driving Debian's chromium).

`chromium_path` finds /usr/bin/chromium; when it is missing and the tests run as root with
apt-get, it installs Debian's `chromium` package. Otherwise the test is skipped with the
reason, or fails when JAXMM_REQUIRE_BROWSER=1 (CI sets it, so a missing browser cannot pass
unnoticed). Playwright's own browser download (`playwright install`) is never used.
"""
import os
import shutil
import subprocess

import pytest

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")
INSTALL_TIMEOUT_S = 900


def unavailable(reason: str):
  """Skips the test, or fails it when the environment requires the browser."""
  if os.environ.get("JAXMM_REQUIRE_BROWSER") == "1":
    pytest.fail(f"{reason} (JAXMM_REQUIRE_BROWSER=1)", pytrace=False)
  pytest.skip(reason)


def find_chromium() -> str | None:
  found = [p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)]
  return found[0] if found else shutil.which("chromium")


def install_chromium() -> str:
  """`apt-get update && apt-get install chromium`; '' on success, else what went wrong."""
  env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
  for command in (["apt-get", "update"],
                  ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
    try:
      done = subprocess.run(command, check=False, env=env, capture_output=True, text=True,
                            timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      return f"{' '.join(command)} took over {INSTALL_TIMEOUT_S} s"
    if done.returncode:
      return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
  return ""


@pytest.fixture(scope="session")
def chromium_path() -> str:
  """The chromium executable, installed from Debian's packages when missing and possible."""
  path = find_chromium()
  if path:
    return path
  if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
    unavailable("no chromium at /usr/bin/chromium, and not root with apt-get to install it "
                "(apt-get install chromium)")
  problem = install_chromium()
  path = find_chromium()
  if not path:
    unavailable(f"installing Debian's chromium did not give a browser: {problem or 'not found'}")
  return path


@pytest.fixture(scope="session")
def browser(chromium_path):
  """A Playwright Browser on that chromium (headless), closed after the session."""
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    unavailable("playwright is not installed (pip install playwright)")
  with sync_playwright() as playwright:
    launched = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                          args=list(CHROMIUM_ARGS))
    try:
      yield launched
    finally:
      launched.close()


def artifacts_dir(repo: str) -> str:
  """$JAXMM_TEST_ARTIFACTS, else <repo>/test-artifacts (created)."""
  path = os.environ.get("JAXMM_TEST_ARTIFACTS") or os.path.join(repo, "test-artifacts")
  os.makedirs(path, exist_ok=True)
  return path
