"""Procedural dermoscopy-like images: skin, one lesion of a given appearance, optional ruler.

Rendering is a pure function of explicit generators, so an image is reproducible from its
seeds. A lesion's intrinsic look (outline, colours, texture, skin tone) is drawn from the
lesion generator and painted in the lesion's own coordinate frame; the capture (rotation,
scale, position, lighting, noise, ruler) comes from the image generator. Several images of one
lesion therefore look alike without being identical.

Appearances (the visual phenotypes the classes are mixtures of, see synthetic_derm):
  0 regular_nevus       symmetric, sharp, uniform brown, faint pigment network
  1 irregular_pigmented asymmetric radial-noise outline, dark brown + blue-grey veil, black dots
  2 keratotic           tan, stuck-on sharp border, cerebriform ridges, milia-like white dots
  3 scaly_erythematous  pink-red, ill-defined border, white scale speckles
  4 pearly_vascular     pearly pink-white, arborizing red vessels, blue-grey ovoid nests
  5 central_white_patch light-brown ring around a white scar-like centre
  6 vascular_lacunae    red/purple with round darker lacunae
"""
import dataclasses
from typing import Callable

import numpy as np

from jaxmm.data.procedural import dot_field, line_field, pixel_grid, smooth_field

# Largest lesion extent from its centre, as a fraction of the image side; the outer band of the
# image (where the ruler goes) stays free of lesion at the image corners.
MAX_EXTENT = 0.40


def mix(a, b, t):
  """Linear interpolation between colours a and b: a + (b - a) * t."""
  return np.asarray(a, np.float32) + (np.asarray(b, np.float32) - np.asarray(a, np.float32)) * t


def jitter(rng: np.random.Generator, rgb, amount: float) -> np.ndarray:
  """Colour with independent Gaussian jitter per channel, clipped to [0, 1]: float32 [3]."""
  return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, amount, 3), 0, 1).astype(np.float32)


def layer(base: np.ndarray, overlay_rgb, weight: np.ndarray) -> np.ndarray:
  """Blends a constant colour over an RGB image with per-pixel weight in [0, 1]."""
  w = np.clip(weight, 0, 1)[..., None]
  return base * (1 - w) + np.asarray(overlay_rgb, np.float32) * w


@dataclasses.dataclass(frozen=True)
class Outline:
  """Lesion outline in its own frame.

  r(theta) = radius * (1 + sum_k amp_k cos(k theta + phase_k)), on an ellipse of `aspect`;
  `softness` is the width (in normalised radius) over which the colour fades in at the border.
  """
  radius: float
  aspect: float
  amplitudes: np.ndarray
  phases: np.ndarray
  softness: float


def draw_outline(rng: np.random.Generator, radius: tuple, irregularity: tuple,
                 softness: tuple) -> Outline:
  """Random outline; `irregularity` bounds the harmonic amplitudes (asymmetric when large)."""
  harmonics = np.arange(1, 8)
  amplitudes = rng.uniform(*irregularity, len(harmonics)) / np.sqrt(harmonics)
  r = rng.uniform(*radius)
  r = min(r, MAX_EXTENT / 1.1 / (1 + amplitudes.sum()))
  return Outline(radius=r, aspect=rng.uniform(0.7, 1.0), amplitudes=amplitudes,
                 phases=rng.uniform(0, 2 * np.pi, len(harmonics)),
                 softness=rng.uniform(*softness))


def outline_depth(outline: Outline, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Normalised radius t = rho / r(theta): < 1 inside the lesion, [S, S]."""
  u = np.asarray(u, np.float32)
  v = np.asarray(v, np.float32) / np.float32(outline.aspect)
  rho = np.sqrt(u * u + v * v)
  # cos(k theta + phase) = Re(e^{i k theta} e^{i phase}); powers of e^{i theta} avoid trig.
  turn = (u + 1j * v) / np.maximum(rho, np.float32(1e-12))
  power, r = np.ones_like(turn), np.ones_like(u)
  for a, p in zip(outline.amplitudes, outline.phases):
    power = power * turn
    r += np.float32(a) * (power * np.complex64(np.exp(1j * p))).real
  return rho / (np.float32(outline.radius) * r)


# ----------------------------------------------------------------------------- painters
# A painter returns the lesion's RGB colour layer [S, S, 3] given the lesion generator, the
# lesion frame (u, v) in units of the lesion radius, t = normalised radius (0 centre, 1 border)
# and px, the size of one pixel in lesion-radius units (the smallest dot drawn).

Painter = Callable[[np.random.Generator, np.ndarray, np.ndarray, np.ndarray, float],
                   np.ndarray]


def _base(rgb: np.ndarray, t: np.ndarray, centre_gain: float) -> np.ndarray:
  """Constant colour with a radial brightness gradient (centre darker when gain > 0)."""
  gain = 1 - centre_gain * (1 - np.clip(t, 0, 1))
  return np.clip(rgb[None, None] * gain[..., None], 0, 1)


def paint_regular_nevus(rng, u, v, t, px):
  brown = jitter(rng, mix((0.64, 0.44, 0.30), (0.38, 0.23, 0.14), rng.uniform()), 0.03)
  img = _base(brown, t, rng.uniform(-0.15, 0.3))
  net = np.maximum(line_field(rng, u, v, rng.uniform(5, 9), 0.35),
                   line_field(rng, u, v, rng.uniform(5, 9), 0.35))
  img = img * (1 - rng.uniform(0.1, 0.35) * net)[..., None]
  globules = dot_field(rng, u, v, int(rng.integers(0, 6)), 0.6, (0.04, 0.07), px)
  return layer(img, brown * 0.6, globules * 0.8)


def paint_irregular_pigmented(rng, u, v, t, px):
  dark = jitter(rng, mix((0.42, 0.26, 0.16), (0.22, 0.12, 0.08), rng.uniform()), 0.03)
  img = _base(dark, t, rng.uniform(-0.1, 0.2))
  light = smooth_field(rng, u, v, terms=5, max_freq=1.5)
  img = layer(img, jitter(rng, (0.66, 0.46, 0.32), 0.04), (light - 0.3) * 0.8)
  veil = smooth_field(rng, u, v, terms=5, max_freq=1.5)
  veil_weight = np.minimum((veil - rng.uniform(0.0, 0.8)) * 1.2, 0.75)
  img = layer(img, jitter(rng, (0.48, 0.50, 0.56), 0.04), veil_weight)
  dots = dot_field(rng, u, v, int(rng.integers(4, 20)), 0.8, (0.03, 0.06), px)
  return layer(img, (0.08, 0.06, 0.06), dots)


def paint_keratotic(rng, u, v, t, px):
  tan = jitter(rng, mix((0.76, 0.60, 0.44), (0.52, 0.38, 0.27), rng.uniform()), 0.03)
  img = _base(tan, t, rng.uniform(-0.1, 0.1))
  ridges = line_field(rng, u, v, rng.uniform(3, 6), 0.45)
  img = img * (1 - rng.uniform(0.15, 0.35) * ridges)[..., None]
  milia = dot_field(rng, u, v, int(rng.integers(2, 10)), 0.7, (0.03, 0.05), px)
  return layer(img, (0.96, 0.93, 0.86), milia)


def paint_scaly_erythematous(rng, u, v, t, px):
  pink = jitter(rng, mix((0.90, 0.62, 0.60), (0.74, 0.40, 0.40), rng.uniform()), 0.03)
  img = _base(pink, t, rng.uniform(-0.1, 0.15))
  pigment = smooth_field(rng, u, v, terms=4, max_freq=1.2)
  img = layer(img, jitter(rng, (0.62, 0.45, 0.36), 0.04), (pigment - 0.6) * 0.6)
  scale = dot_field(rng, u, v, int(rng.integers(15, 45)), 0.85, (0.02, 0.05), px)
  img = layer(img, (0.97, 0.95, 0.92), scale * 0.9)
  red_dots = dot_field(rng, u, v, int(rng.integers(0, 12)), 0.8, (0.02, 0.035), px)
  return layer(img, (0.66, 0.18, 0.20), red_dots)


def paint_pearly_vascular(rng, u, v, t, px):
  pearl = jitter(rng, mix((0.94, 0.82, 0.80), (0.82, 0.64, 0.64), rng.uniform()), 0.03)
  img = _base(pearl, t, rng.uniform(-0.15, 0.05))
  vessels = np.maximum(line_field(rng, u, v, rng.uniform(1.5, 3.0), 0.12),
                       line_field(rng, u, v, rng.uniform(1.5, 3.0), 0.12))
  img = layer(img, jitter(rng, (0.74, 0.16, 0.20), 0.04), vessels * rng.uniform(0.5, 0.9))
  nests = dot_field(rng, u, v, int(rng.integers(0, 4)), 0.6, (0.07, 0.14), px)
  return layer(img, jitter(rng, (0.36, 0.38, 0.48), 0.04), nests * 1.2)


def paint_central_white_patch(rng, u, v, t, px):
  brown = jitter(rng, mix((0.70, 0.52, 0.40), (0.50, 0.34, 0.24), rng.uniform()), 0.03)
  img = _base(brown, t, rng.uniform(-0.3, 0.0))
  net = line_field(rng, u, v, rng.uniform(5, 8), 0.35)
  img = img * (1 - 0.15 * net)[..., None]
  edge = rng.uniform(0.35, 0.6) * (1 + 0.25 * smooth_field(rng, u, v, terms=4, max_freq=2.0))
  patch = np.clip((edge - t) / 0.15, 0, 1)
  return layer(img, jitter(rng, (0.93, 0.89, 0.85), 0.02), patch)


def paint_vascular_lacunae(rng, u, v, t, px):
  base = jitter(rng, mix((0.74, 0.18, 0.26), (0.46, 0.14, 0.40), rng.uniform()), 0.04)
  img = _base(base, t, rng.uniform(0.0, 0.3))
  lacunae = dot_field(rng, u, v, int(rng.integers(5, 16)), 0.7, (0.07, 0.14), px)
  return layer(img, base * 0.55, np.clip(lacunae * 1.4, 0, 1))


@dataclasses.dataclass(frozen=True)
class Appearance:
  """One visual phenotype: outline ranges and the painter of its colour layer."""
  name: str
  radius: tuple
  irregularity: tuple
  softness: tuple
  painter: Painter


APPEARANCES = (
    Appearance("regular_nevus", (0.16, 0.28), (0.0, 0.06), (0.02, 0.06),
               paint_regular_nevus),
    Appearance("irregular_pigmented", (0.18, 0.30), (0.08, 0.22), (0.04, 0.20),
               paint_irregular_pigmented),
    Appearance("keratotic", (0.17, 0.30), (0.02, 0.10), (0.01, 0.04), paint_keratotic),
    Appearance("scaly_erythematous", (0.17, 0.30), (0.06, 0.18), (0.15, 0.35),
               paint_scaly_erythematous),
    Appearance("pearly_vascular", (0.15, 0.26), (0.02, 0.12), (0.04, 0.12),
               paint_pearly_vascular),
    Appearance("central_white_patch", (0.14, 0.24), (0.0, 0.06), (0.10, 0.25),
               paint_central_white_patch),
    Appearance("vascular_lacunae", (0.14, 0.24), (0.0, 0.08), (0.01, 0.04),
               paint_vascular_lacunae),
)
APPEARANCE_NAMES = tuple(a.name for a in APPEARANCES)


# ----------------------------------------------------------------------------- the scene

@dataclasses.dataclass(frozen=True)
class Capture:
  """Per-image capture: lesion pose, lighting and the ruler."""
  centre: tuple
  rotation: float
  scale: float
  brightness: float
  vignette: float
  noise: float
  ruler: bool


def draw_capture(rng: np.random.Generator, ruler: bool) -> Capture:
  """Random pose/lighting of one photograph of a lesion."""
  return Capture(centre=tuple(0.5 + rng.uniform(-0.05, 0.05, 2)),
                 rotation=rng.uniform(0, 2 * np.pi), scale=rng.uniform(0.9, 1.1),
                 brightness=rng.uniform(0.92, 1.06), vignette=rng.uniform(0.0, 0.8),
                 noise=rng.uniform(0.008, 0.02), ruler=ruler)


def lesion_frame(capture: Capture, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Lesion-frame coordinates (u, v) of every pixel (rotated, scaled, centred): [S, S] each."""
  y, x = pixel_grid(size)
  dy, dx = y - capture.centre[0], x - capture.centre[1]
  c, s = np.cos(capture.rotation), np.sin(capture.rotation)
  return (c * dx + s * dy) / capture.scale, (-s * dx + c * dy) / capture.scale


def skin(rng_lesion: np.random.Generator, rng_image: np.random.Generator, capture: Capture,
         size: int) -> np.ndarray:
  """Skin background float32 [S, S, 3]: per-lesion tone, smooth variation, vignette."""
  tone = mix((0.95, 0.80, 0.72), (0.62, 0.45, 0.35), rng_lesion.beta(2.0, 4.0))
  y, x = pixel_grid(size)
  shade = 1 + 0.05 * smooth_field(rng_image, x, y, terms=5, max_freq=2.5)
  redness = 0.03 * smooth_field(rng_image, x, y, terms=4, max_freq=3.0)
  img = tone[None, None] * shade[..., None] * capture.brightness
  img[..., 0] += redness
  r2 = (y - 0.5) ** 2 + (x - 0.5) ** 2
  img *= (1 - capture.vignette * np.clip(r2 - 0.16, 0, None) * 3)[..., None]
  return img


def ruler_mask(rng: np.random.Generator, size: int) -> np.ndarray:
  """Ruler-like marks along one image edge (line + ticks), bool [S, S]."""
  y, x = np.mgrid[0:size, 0:size]
  edge = rng.integers(4)
  normal = (y, size - 1 - y, x, size - 1 - x)[edge]   # distance from the chosen edge
  along = (x, x, y, y)[edge]
  offset = max(1, round(0.03 * size))
  width = max(1, round(size / 64))
  spacing = max(3, round(size / rng.uniform(8, 12)))
  tick = max(2, round(size / 16))
  phase = rng.integers(spacing)
  line = (normal >= offset) & (normal < offset + width)
  index = (along - phase) // spacing
  length = np.where(index % 5 == 0, 2 * tick, tick)
  ticks = (((along - phase) % spacing) < width) & (normal >= offset + width) & (
      normal < offset + width + length)
  return line | ticks


def render(lesion_seed, image_seed, appearance: int, size: int, ruler: bool) -> dict:
  """Renders one image from its lesion and image seeds (anything np.random.default_rng takes).

  Returns:
    image uint8 [S, S, 3]; roi_mask uint8 [S, S] (the lesion's pixels);
    confounder_mask uint8 [S, S] (ruler pixels, disjoint from roi_mask, empty without ruler).
  """
  rng_lesion = np.random.default_rng(lesion_seed)
  rng_image = np.random.default_rng(image_seed)
  spec = APPEARANCES[appearance]
  capture = draw_capture(rng_image, ruler)
  outline = draw_outline(rng_lesion, spec.radius, spec.irregularity, spec.softness)
  background = skin(rng_lesion, rng_image, capture, size)
  u, v = lesion_frame(capture, size)
  t = outline_depth(outline, u, v)
  roi = t < 1
  # Painters work in units of the lesion radius, so textures scale with the lesion.
  unit = outline.radius
  colour = spec.painter(rng_lesion, u / unit, v / unit, t, 0.7 / (size * unit * capture.scale))
  alpha = np.where(roi, np.clip((1 - t) / outline.softness, 0, 1) ** 0.7, 0.0)
  alpha = np.maximum(alpha, roi * 0.35)  # even a faint border pixel is visibly lesion
  img = background * (1 - alpha[..., None]) + colour * alpha[..., None]
  marks = np.zeros_like(roi)
  if ruler:
    marks = ruler_mask(rng_image, size) & ~roi
    img = layer(img, np.full(3, rng_image.uniform(0.1, 0.3), np.float32), marks.astype(np.float32))
  img = img + np.float32(capture.noise) * rng_image.standard_normal(img.shape, np.float32)
  return {"image": np.clip(np.round(img * 255), 0, 255).astype(np.uint8),
          "roi_mask": roi.astype(np.uint8), "confounder_mask": marks.astype(np.uint8)}
