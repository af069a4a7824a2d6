"""Procedural chest radiographs: body, dark lung fields, bright mediastinum/heart, faint ribs,
and findings painted as local patterns with their pixel masks.

The masks are the ground truth of explanation metrics, so a painter changes no pixel outside
the mask it returns: soft findings (opacity, edema haze, fracture callus) fade to exactly zero
at their mask's edge, and a pneumothorax's mask holds its pleural line. A mask may still hold
pixels that its finding barely changes (the part of an enlarged heart over the normal one).

Coordinates are in an "anatomy frame" (y down, x right, unit = image side) obtained from the
pixel grid by a small random shift/scale/rotation (patient positioning). The patient's right
appears on the image left, as on a PA radiograph. Each finding painter takes the current image,
the anatomy and a cxr_reports.Finding and returns the new image and the finding's mask.
"""
import dataclasses
from typing import Callable

import numpy as np

from jaxmm.data import cxr_reports
from jaxmm.data.procedural import pixel_grid, smooth_field

ZONE_OFFSETS = {"upper": -0.4, "mid": 0.0, "lower": 0.45, "": 0.45}
OPACITY_LEVEL = 0.35  # the opacity's mask is where its Gaussian exceeds this share of its peak
EDEMA_LEVEL = 0.5     # the edema's mask is where its perihilar haze exceeds this level
CALLUS_SIGMA, CALLUS_RADIUS = 0.012, 0.02
FRACTURE_RADIUS = 0.03  # the callus (0.01 beside the break, radius 0.02) lies inside it


@dataclasses.dataclass(frozen=True)
class Anatomy:
  """Geometry of one radiograph plus its anatomy-frame coordinates (ay, ax) [S, S]."""
  ay: np.ndarray
  ax: np.ndarray
  size: int
  centre_y: float
  lung_dx: float
  lung_w: float
  lung_h: float
  heart_w: float
  heart_h: float
  mediastinum_w: float

  def lung_cx(self, side: str) -> float:
    """Lung centre x; the patient's right lung is on the image left."""
    return 0.5 + (self.lung_dx if side == "left" else -self.lung_dx)

  def lateral(self, side: str) -> float:
    """+1 if the patient's `side` is towards larger x on the image, else -1."""
    return 1.0 if side == "left" else -1.0

  def lung_radius(self, side: str) -> np.ndarray:
    """Normalised elliptic radius from the lung centre (< 1 inside the lung ellipse) [S, S]."""
    return np.sqrt(((self.ax - self.lung_cx(side)) / self.lung_w) ** 2
                   + ((self.ay - self.centre_y) / self.lung_h) ** 2)

  def lung(self, side: str) -> np.ndarray:
    """Bool mask of one lung field (ellipse minus the mediastinum and heart)."""
    return (self.lung_radius(side) < 1) & ~self.mediastinum() & ~self.heart(1.0)

  def mediastinum(self, widen: float = 1.0) -> np.ndarray:
    top = self.centre_y - 0.95 * self.lung_h
    return (np.abs(self.ax - 0.5) < self.mediastinum_w * widen) & (self.ay > top) & (
        self.ay < self.centre_y + 0.35 * self.lung_h)

  def heart(self, scale: float) -> np.ndarray:
    cy = self.centre_y + 0.55 * self.lung_h
    cx = 0.5 + 0.04 * scale
    return ((self.ax - cx) / (self.heart_w * scale)) ** 2 + ((self.ay - cy) / self.heart_h) ** 2 < 1

  def zone_centre(self, side: str, zone: str) -> tuple[float, float]:
    return self.centre_y + ZONE_OFFSETS[zone] * self.lung_h, self.lung_cx(side)

  def sides(self, side: str) -> tuple:
    return ("left", "right") if side in ("bilateral", "") else (side,)


def draw_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
  """Random patient positioning and body proportions."""
  y, x = pixel_grid(size)
  angle = rng.uniform(-0.05, 0.05)
  scale = rng.uniform(0.95, 1.05)
  dy, dx = y - 0.5 - rng.uniform(-0.03, 0.03), x - 0.5 - rng.uniform(-0.03, 0.03)
  c, s = np.cos(angle), np.sin(angle)
  return Anatomy(ay=0.5 + (c * dy - s * dx) / scale, ax=0.5 + (s * dy + c * dx) / scale,
                 size=size, centre_y=rng.uniform(0.44, 0.48), lung_dx=rng.uniform(0.17, 0.2),
                 lung_w=rng.uniform(0.12, 0.145), lung_h=rng.uniform(0.28, 0.32),
                 heart_w=rng.uniform(0.11, 0.13), heart_h=rng.uniform(0.09, 0.11),
                 mediastinum_w=rng.uniform(0.045, 0.06))


def ribs(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
  """Faint curved rib bands over the chest, [S, S] in [0, 1]."""
  curve = anat.ay - 0.9 * (anat.ax - 0.5) ** 2 - rng.uniform(0, 0.01)
  phase = (curve - (anat.centre_y - anat.lung_h)) / (0.09 * anat.lung_h / 0.3)
  return np.clip(np.cos(2 * np.pi * phase) - 0.4, 0, None) / 0.6


def base_image(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
  """Normal chest: body, lungs with vascular markings, mediastinum, heart, ribs [S, S]."""
  body = ((anat.ax - 0.5) / 0.47) ** 2 + ((anat.ay - 0.58) / 0.6) ** 2 < 1
  img = np.where(body, 0.46, 0.05)
  markings = 0.025 * smooth_field(rng, anat.ax, anat.ay, terms=8, max_freq=14.0)
  for side in ("left", "right"):
    gradient = 0.07 * (anat.ay - anat.centre_y) / anat.lung_h
    img = np.where(anat.lung(side), 0.19 + gradient + markings, img)
  img = np.where(anat.mediastinum(), 0.68, img)
  img = np.where(anat.heart(1.0), 0.72, img)
  thorax = body & (anat.ay < anat.centre_y + 1.05 * anat.lung_h)
  img = img + 0.07 * ribs(anat, rng) * thorax
  clavicle = np.abs(anat.ay - (anat.centre_y - anat.lung_h - 0.01) - 0.25 * np.abs(
      anat.ax - 0.5)) < 0.012
  return np.where(clavicle & body & (np.abs(anat.ax - 0.5) < 0.3), img + 0.15, img)


def ensure_pixel(mask: np.ndarray, anat: Anatomy, y: float, x: float) -> np.ndarray:
  """Adds the pixel nearest to anatomy point (y, x) so a tiny structure keeps a mask."""
  d = (anat.ay - y) ** 2 + (anat.ax - x) ** 2
  mask = mask.copy()
  mask.flat[int(np.argmin(d))] = True
  return mask


def snap(anat: Anatomy, region: np.ndarray, y: float, x: float) -> tuple[float, float]:
  """The point of `region` closest to (y, x) (itself when inside or the region is empty)."""
  d = (anat.ay - y) ** 2 + (anat.ax - x) ** 2
  if not region.any() or region.flat[int(np.argmin(d))]:
    return y, x
  i = int(np.argmin(np.where(region, d, np.inf)))
  return float(anat.ay.flat[i]), float(anat.ax.flat[i])


def min_width(anat: Anatomy, width: float) -> float:
  """Half-width at least 0.6 pixel, so lines stay connected at low resolution."""
  return max(width, 0.6 / anat.size)


def fade_out_at(field: np.ndarray, level: float) -> np.ndarray:
  """`field` (peak 1) lowered by `level` and rescaled to keep its peak [S, S].

  It is exactly 0 where field <= level, so a finding painted as amp * fade_out_at(field, level)
  changes no pixel outside its mask `field > level` and keeps a soft edge (no step there).
  """
  return np.clip(field - level, 0, None) / (1 - level)


def polyline_distance(anat: Anatomy, points) -> np.ndarray:
  """Distance of every pixel to a polyline of anatomy points [(y, x), ...] [S, S]."""
  dist = np.full(anat.ay.shape, np.inf)
  for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
    vy, vx = y1 - y0, x1 - x0
    t = np.clip(((anat.ay - y0) * vy + (anat.ax - x0) * vx) / (vy * vy + vx * vx), 0, 1)
    dist = np.minimum(dist, np.hypot(anat.ay - y0 - t * vy, anat.ax - x0 - t * vx))
  return dist


# ----------------------------------------------------------------------------- painters

def _blob_centre(anat, rng, side, zone, spread=0.45):
  """A random point of the zone of one lung, snapped into the lung field."""
  cy, cx = anat.zone_centre(side, zone)
  y = cy + rng.uniform(-0.12, 0.12) * anat.lung_h
  x = cx + rng.uniform(-spread, spread) * anat.lung_w
  return snap(anat, anat.lung(side), y, x)


def paint_opacity(img, anat, f, rng):
  """A soft Gaussian blob per lung, faded out at its OPACITY_LEVEL mask."""
  mask = np.zeros(img.shape, bool)
  for side in anat.sides(f.side):
    y, x = _blob_centre(anat, rng, side, f.zone)
    sigma, amp = rng.uniform(0.03, 0.05) * (1 + 0.2 * f.grade), rng.uniform(0.18, 0.35)
    blob = np.exp(-((anat.ay - y) ** 2 + (anat.ax - x) ** 2) / (2 * sigma ** 2))
    lung = anat.lung(side)
    img = img + amp * fade_out_at(blob, OPACITY_LEVEL) * lung
    mask |= (blob > OPACITY_LEVEL) & lung
  return img, mask


def paint_consolidation(img, anat, f, rng):
  y, x = _blob_centre(anat, rng, f.side, f.zone, spread=0.3)
  radius = rng.uniform(0.07, 0.11) * (1 + 0.25 * smooth_field(rng, anat.ax, anat.ay, 4, 10.0))
  region = ensure_pixel((np.hypot(anat.ay - y, anat.ax - x) < radius) & anat.lung(f.side),
                        anat, y, x)
  return np.where(region, np.maximum(img, rng.uniform(0.45, 0.6)), img), region


def paint_pneumonia(img, anat, f, rng):
  cy, cx = _blob_centre(anat, rng, f.side, f.zone, spread=0.25)
  lung, field = anat.lung(f.side), np.zeros(img.shape)
  for _ in range(int(rng.integers(3, 7))):
    y, x = cy + rng.normal(0, 0.035), cx + rng.normal(0, 0.03)
    sigma = rng.uniform(0.015, 0.03)
    field = np.maximum(field, np.exp(-((anat.ay - y) ** 2 + (anat.ax - x) ** 2) / (2 * sigma ** 2)))
  region = ensure_pixel((field > 0.35) & lung, anat, cy, cx)
  amp = rng.uniform(0.25, 0.4)
  return img + amp * np.maximum(field, 0.5) * region, region


def paint_atelectasis(img, anat, f, rng):
  mask = np.zeros(img.shape, bool)
  for side in anat.sides(f.side):
    y, x = anat.zone_centre(side, "lower")
    y, x = snap(anat, anat.lung(side), y + rng.uniform(0.05, 0.2) * anat.lung_h, x)
    angle = rng.uniform(-0.35, 0.35)
    along = (anat.ax - x) * np.cos(angle) + (anat.ay - y) * np.sin(angle)
    across = -(anat.ax - x) * np.sin(angle) + (anat.ay - y) * np.cos(angle)
    half_len, half_th = rng.uniform(0.07, 0.1), min_width(anat, rng.uniform(0.012, 0.022))
    band = ensure_pixel((np.abs(along) < half_len) & (np.abs(across) < half_th)
                        & anat.lung(side), anat, y, x)
    img = np.where(band, img + rng.uniform(0.22, 0.35), img)
    mask |= band
  return img, mask


def paint_lesion(img, anat, f, rng):
  y, x = _blob_centre(anat, rng, f.side, f.zone, spread=0.4)
  radius = min_width(anat, (0.02, 0.03, 0.045)[f.grade] * rng.uniform(0.8, 1.2))
  disc = ensure_pixel(np.hypot(anat.ay - y, anat.ax - x) < radius, anat, y, x)
  return np.where(disc, img + rng.uniform(0.3, 0.45), img), disc


def paint_edema(img, anat, f, rng):
  """Bilateral perihilar ("bat wing") haze, faded out at its EDEMA_LEVEL mask."""
  amp = (0.10, 0.16, 0.24)[f.grade] * rng.uniform(0.85, 1.15)
  haze, lungs = np.zeros(img.shape), anat.lung("left") | anat.lung("right")
  for side in ("left", "right"):
    x = 0.5 + anat.lateral(side) * (anat.mediastinum_w + 0.04)
    haze = np.maximum(haze, np.exp(-((anat.ax - x) / 0.1) ** 2 / 2
                                   - ((anat.ay - anat.centre_y) / 0.14) ** 2 / 2))
  img = img + amp * fade_out_at(haze, EDEMA_LEVEL) * lungs
  return img, (haze > EDEMA_LEVEL) & lungs


def paint_effusion(img, anat, f, rng):
  mask = np.zeros(img.shape, bool)
  height = (0.25, 0.4, 0.6)[f.grade] * rng.uniform(0.85, 1.15)
  for side in anat.sides(f.side):
    cx = anat.lung_cx(side)
    lateralness = anat.lateral(side) * (anat.ax - cx) / anat.lung_w
    top = anat.centre_y + anat.lung_h * (1 - height - 0.25 * lateralness)
    fluid = ensure_pixel((anat.lung_radius(side) < 1) & (anat.ay > top) & ~anat.heart(1.0),
                         anat, anat.centre_y + 0.9 * anat.lung_h, cx)
    img = np.where(fluid, np.maximum(img, 0.55), img)
    mask |= fluid
  return img, mask


def paint_pneumothorax(img, anat, f, rng):
  """Apical air free of lung markings; its mask holds the bright visceral pleural line too."""
  depth = (0.2, 0.35, 0.5)[f.grade] * rng.uniform(0.85, 1.15)
  radius = anat.lung_radius(f.side)
  cx, side_sign = anat.lung_cx(f.side), anat.lateral(f.side)
  apical = anat.lung(f.side) & (anat.ay < anat.centre_y) & (
      side_sign * (anat.ax - cx) > -0.3 * anat.lung_w)
  region = ensure_pixel(apical & (radius > 1 - depth), anat,
                        anat.centre_y - 0.9 * anat.lung_h, cx)
  edge = apical & ~region & (np.abs(radius - (1 - depth)) < 3.0 / anat.size)
  img = np.where(region, 0.08, np.where(edge, img + 0.15, img))
  return img, region | edge


def paint_pleural_other(img, anat, f, rng):
  radius = anat.lung_radius(f.side)
  cx, side_sign = anat.lung_cx(f.side), anat.lateral(f.side)
  thickness = max(rng.uniform(0.06, 0.12), 1.2 / (anat.size * anat.lung_w))
  band = ((radius > 1 - thickness) & (radius < 1) & (side_sign * (anat.ax - cx) > 0)
          & (anat.ay > anat.centre_y - 0.6 * anat.lung_h)
          & (anat.ay < anat.centre_y + 0.4 * anat.lung_h))
  band = ensure_pixel(band, anat, anat.centre_y, cx + side_sign * 0.95 * anat.lung_w)
  return np.where(band, img + rng.uniform(0.25, 0.35), img), band


def paint_cardiomegaly(img, anat, f, rng):
  heart = anat.heart((1.3, 1.45, 1.6)[f.grade] * rng.uniform(0.95, 1.05))
  return np.where(heart, np.maximum(img, 0.72), img), heart


def paint_mediastinum(img, anat, f, rng):
  widen = (1.5, 1.8, 2.1)[f.grade]
  upper = anat.ay < anat.centre_y - 0.1 * anat.lung_h
  added = anat.mediastinum(widen) & upper & ~anat.mediastinum()
  added = ensure_pixel(added, anat, anat.centre_y - 0.5 * anat.lung_h,
                       0.5 + anat.mediastinum_w * (1 + widen) / 2)
  return np.where(added, np.maximum(img, 0.66), img), added


def paint_fracture(img, anat, f, rng):
  index = cxr_reports.RIBS.index(f.detail) if f.detail in cxr_reports.RIBS else 2
  y = anat.centre_y + (-0.55 + 0.25 * index) * anat.lung_h
  x = anat.lung_cx(f.side) + anat.lateral(f.side) * 0.6 * anat.lung_w
  y += 0.9 * (x - 0.5) ** 2
  region = ensure_pixel(np.hypot(anat.ay - y, anat.ax - x) < FRACTURE_RADIUS, anat, y, x)
  # Minimum widths keep the break on the pixel nearest to it, which the region always holds.
  gap = (np.abs(anat.ax - x) < min_width(anat, 0.006)) & (
      np.abs(anat.ay - y) < min_width(anat, 0.02))
  callus = np.exp(-((anat.ay - y) ** 2 + (anat.ax - x - 0.01) ** 2) / (2 * CALLUS_SIGMA ** 2))
  callus = fade_out_at(callus, np.exp(-CALLUS_RADIUS ** 2 / (2 * CALLUS_SIGMA ** 2)))
  # Cut at the region: below about 27 px the gap's minimum widths reach past it.
  return img + (0.12 * callus - 0.15 * gap) * region, region


def device_path(anat: Anatomy, f) -> list:
  """Polyline (anatomy points) of a support device."""
  top, cy = anat.centre_y - anat.lung_h, anat.centre_y
  if f.detail == "endotracheal tube":
    return [(0.0, 0.5), (top + 0.05, 0.5)]
  if f.detail == "nasogastric tube":
    return [(0.0, 0.51), (cy + 0.3, 0.52), (cy + 0.42, 0.6)]
  if f.detail == "central venous catheter":
    return [(top - 0.04, 0.3), (top + 0.04, 0.42), (cy - 0.05, 0.47)]
  if f.detail == "chest tube":
    cx, s = anat.lung_cx(f.side), anat.lateral(f.side)
    return [(cy + 0.8 * anat.lung_h, cx + s * 1.1 * anat.lung_w),
            (cy + 0.2 * anat.lung_h, cx + s * 0.6 * anat.lung_w),
            (cy - 0.6 * anat.lung_h, cx + s * 0.1 * anat.lung_w)]
  return [(top + 0.05, 0.72), (top + 0.05, 0.76), (cy, 0.58), (cy + 0.12, 0.52)]


def paint_device(img, anat, f, rng):
  path = device_path(anat, f)
  device = polyline_distance(anat, path) < min_width(anat, 0.006)
  if f.detail == "pacemaker":
    y, x = path[0][0], 0.74
    device |= (np.abs(anat.ay - y) < 0.025) & (np.abs(anat.ax - x) < 0.035)
  device = ensure_pixel(device, anat, *path[-1])
  return np.where(device, rng.uniform(0.85, 0.95), img), device


Painter = Callable[[np.ndarray, Anatomy, cxr_reports.Finding, np.random.Generator],
                   tuple[np.ndarray, np.ndarray]]
PAINTERS: dict[str, Painter] = {
    "Atelectasis": paint_atelectasis, "Cardiomegaly": paint_cardiomegaly,
    "Consolidation": paint_consolidation, "Edema": paint_edema,
    "Enlarged Cardiomediastinum": paint_mediastinum, "Fracture": paint_fracture,
    "Lung Lesion": paint_lesion, "Lung Opacity": paint_opacity,
    "Pleural Effusion": paint_effusion, "Pleural Other": paint_pleural_other,
    "Pneumonia": paint_pneumonia, "Pneumothorax": paint_pneumothorax,
    "Support Devices": paint_device,
}
# Paint order: silhouettes first, then fluid/air, then opacities, devices on top.
PAINT_ORDER = ("Cardiomegaly", "Enlarged Cardiomediastinum", "Pleural Effusion", "Pneumothorax",
               "Edema", "Consolidation", "Lung Opacity", "Pneumonia", "Atelectasis",
               "Lung Lesion", "Pleural Other", "Fracture", "Support Devices")


def render(seed, findings, size: int) -> dict:
  """Renders a radiograph showing the `drawn` findings.

  Returns:
    image uint8 [S, S, 1]; roi_masks uint8 [14, S, S] with the pixels of each POSITIVE drawn
    finding (uncertain ones are drawn half of the time but never masked); roi_mask uint8
    [S, S] their union.
  """
  rng = np.random.default_rng(seed)
  anat = draw_anatomy(rng, size)
  img = base_image(anat, rng)
  masks = np.zeros((len(cxr_reports.CHEXPERT_LABELS), size, size), bool)
  drawn = sorted((f for f in findings if f.drawn), key=lambda f: PAINT_ORDER.index(f.name))
  for f in drawn:
    img, mask = PAINTERS[f.name](img, anat, f, rng)
    if f.status == cxr_reports.POSITIVE:
      masks[f.label] |= mask
  contrast, gamma = rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.15)
  noise = np.float32(rng.uniform(0.02, 0.04)) * rng.standard_normal(img.shape, np.float32)
  img = np.clip(img * contrast + noise, 0, 1) ** gamma
  return {"image": np.round(img * 255).astype(np.uint8)[..., None],
          "roi_masks": masks.astype(np.uint8), "roi_mask": masks.any(0).astype(np.uint8)}
