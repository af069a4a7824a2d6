"""report.html in a real headless Chromium (Playwright): loads offline with no console or page
error, every image decoded, no horizontal overflow on a 1366x768 laptop screen; a full-page
screenshot is kept as a test artefact ($JAXMM_TEST_ARTIFACTS, else <repo>/test-artifacts/).

The workdir is a two-variant pipeline dir written with jaxmm's own writers (writer.py,
metrics.py, workflow.write_comparison) from seeded random logits, plus a wide table and a long
unbroken string, the things that break a page's width.
"""
import csv
import json
import os

import browser as browser_lib
import numpy as np
import pytest
from browser import browser, chromium_path  # noqa: F401 (the fixtures)

from jaxmm import workflow
from jaxmm.data.atomic import write_npz_atomic, write_text_atomic
from jaxmm.report import report_runner
from jaxmm.train import config_lib, writer
from jaxmm.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIEWPORT = {"width": 1366, "height": 768}
CLASS_NAMES = ["nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"]
LONG_WORD = "unbroken_" * 40


def write_run(run_dir: str, config, seed: int) -> dict:
  """A run dir as loop.train_and_evaluate leaves it (no checkpoint): records, metrics.jsonl,
  results.json and predictions/test.npz of seeded random logits that favour the true class."""
  rng = np.random.default_rng(seed)
  n, k = 90, len(CLASS_NAMES)
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  writer.write_run_info(run_dir, config.to_json_best_effort(indent=2), seed)
  log = writer.MetricsWriter(run_dir)
  for step in range(5, 55, 5):
    log.write(step, "train", {"loss": 2.0 / (1 + 0.1 * step), "learning_rate": 1e-3})
    if step % 10 == 0:
      log.write(step, "validation", {"loss": 2.2 / (1 + 0.08 * step), "macro_f1": step / 80})
  metrics = metrics_lib.multiclass_metrics(logits, labels, CLASS_NAMES)
  task = {"num_classes": k, "class_names": CLASS_NAMES, "multilabel": False,
          "split_sizes": {"train": 300, "validation": 90, "test": n}, "meta_dim": 24,
          "vocab_size": 0, "image_shape": [32, 32, 3]}
  results = {"best_step": 40, "final_step": 50, "early_stopped": False, "task": task,
             "validation": metrics, "test": metrics}
  write_text_atomic(os.path.join(run_dir, "results.json"), writer.dumps(results))
  write_npz_atomic(os.path.join(run_dir, "predictions", "test.npz"),
                   {"logits": logits.astype(np.float32), "label": labels.astype(np.int32),
                    "index": np.arange(n), "sex": np.array(["female", "male"] * (n // 2))})
  return results


def write_wide_table(path: str) -> None:
  """24 columns and a 360-character word: the table must scroll inside its box."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  columns = ["model", "attribute", "category"] + [f"metric_{i}_with_a_long_name" for i in range(21)]
  with open(path, "w", newline="") as f:
    out = csv.DictWriter(f, fieldnames=columns)
    out.writeheader()
    for row in range(3):
      out.writerow({"model": "concat", "attribute": "site", "category": LONG_WORD,
                    **{c: f"{0.1 * row + i / 100:.6f}" for i, c in enumerate(columns[3:])}})


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp("browser_report")
  config = config_lib.load_config_file(
      os.path.join(REPO, "configs", "synthetic_derm.py") + ":smoke")
  rows = []
  for seed, name in enumerate(("meta", "concat")):
    variant = workflow.variant_config(config, name)
    results = write_run(str(root / name), variant, seed)
    rows.extend(workflow.comparison_rows({name: (variant, results)}))
  workflow.write_comparison(str(root), rows, workflow.fusion_margins(rows, "macro_f1"))
  write_wide_table(str(root / "concat" / "analysis" / "fairness" / "slices.csv"))
  with open(root / "concat" / "analysis" / "explanation_evaluation.json", "w") as f:
    json.dump({"split": "test", "num_examples": 90, "methods": [
        {"method": LONG_WORD, "dice": 0.4, "dice_ci": [0.3, 0.5]}]}, f)
  return report_runner.run_report(config, str(root))


def test_report_renders_in_chromium(browser, report_path):  # noqa: F811
  page = browser.new_page(viewport=VIEWPORT)
  errors, requests = [], []
  page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
  page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
  page.on("request", lambda r: requests.append(r.url))
  try:
    page.goto(f"file://{report_path}", wait_until="load")
    images = page.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth])")
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    sections = page.evaluate("Array.from(document.querySelectorAll('section'), s => s.id)")
    # the navigation scrolls to a variant's section; an opened <details> still fits the width
    page.click("nav a[href='#concat-roc-pr']")
    scrolled = page.evaluate("window.scrollY")
    page.click("#configuration summary")
    opened = page.evaluate("[document.querySelector('#configuration details').open, "
                           "document.documentElement.scrollWidth]")
    shot = os.path.join(browser_lib.artifacts_dir(REPO), "report.png")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=shot, full_page=True)
  finally:
    page.close()
  assert not errors, errors
  assert all(u.startswith(("file://", "data:")) for u in requests), requests
  # 3 training figures per variant and the comparison bars, each decoded
  assert len(images) == 7 and all(done and width > 0 for done, width in images), images
  assert widths[1] == VIEWPORT["width"] and widths[0] <= VIEWPORT["width"], widths
  assert {"summary", "results", "comparison", "variant-concat", "concat-fairness",
          "concat-explanations", "reproducibility"} <= set(sections)
  assert scrolled > VIEWPORT["height"]
  assert opened[0] is True and opened[1] <= VIEWPORT["width"], opened
  with open(shot, "rb") as f:
    header = f.read(24)
  assert header[:8] == b"\x89PNG\r\n\x1a\n"
  assert int.from_bytes(header[16:20], "big") == VIEWPORT["width"]


def test_a_missing_browser_skips_unless_required(monkeypatch):
  monkeypatch.delenv("JAXMM_REQUIRE_BROWSER", raising=False)
  with pytest.raises(pytest.skip.Exception, match="no chromium"):
    browser_lib.unavailable("no chromium")
  monkeypatch.setenv("JAXMM_REQUIRE_BROWSER", "1")
  with pytest.raises(pytest.fail.Exception, match="JAXMM_REQUIRE_BROWSER=1"):
    browser_lib.unavailable("no chromium")
