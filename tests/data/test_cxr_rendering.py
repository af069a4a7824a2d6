"""cxr_rendering: every painter's change lies inside the mask it returns (ROI ground truth)."""
import numpy as np
import pytest

from jaxmm.data import cxr_rendering
from jaxmm.data import synthetic_cxr as sc

# Float rounding only: the audit counted changes above 0.02 (5 grey levels) as visible, and a
# painter should change nothing at all outside its mask.
TOLERANCE = 1e-6
VISIBLE = 0.02
SIZES = (16, 32, 64, 224)
PER_SIZE = 4


def _findings(name: str, count: int) -> list:
  """The first `count` planned findings called `name` (any status: painters ignore it)."""
  plan = sc.plan_dataset(1500, 0)
  found = [(i, f) for i, fs in enumerate(plan.findings) for f in fs if f.name == name]
  assert len(found) >= count, name
  return found[:count]


def _paint(name: str, study: int, finding, size: int):
  """(image before, image after, mask) of one painter on a fresh base image."""
  rng = np.random.default_rng([0, 99, study, finding.label, size])
  anat = cxr_rendering.draw_anatomy(rng, size)
  before = cxr_rendering.base_image(anat, rng)
  after, mask = cxr_rendering.PAINTERS[name](before.copy(), anat, finding, rng)
  return before, after, mask


@pytest.mark.parametrize("name", sorted(cxr_rendering.PAINTERS))
def test_painter_changes_only_pixels_of_its_mask(name):
  """Edema, Lung Opacity, Pneumothorax and Fracture used to paint beyond their masks."""
  for size in SIZES:
    for study, finding in _findings(name, PER_SIZE):
      before, after, mask = _paint(name, study, finding, size)
      change = np.abs(after - before)
      assert mask.shape == (size, size) and mask.dtype == bool
      outside = (change > TOLERANCE) & ~mask
      assert not outside.any(), (name, size, study, int(outside.sum()), float(change.max()))
      assert (change > VISIBLE).any(), (name, size, study)  # the finding is still drawn


def test_fade_out_at_keeps_peak_and_vanishes_at_level():
  field = np.array([0.0, 0.2, 0.35, 0.5, 1.0])
  np.testing.assert_allclose(cxr_rendering.fade_out_at(field, 0.35),
                             [0.0, 0.0, 0.0, 0.15 / 0.65, 1.0])
