"""Procedural primitives shared by the synthetic image renderers: pixel grids and noise fields.

Every function takes an explicit NumPy generator (never global random state) and coordinate
arrays, so the renderers can evaluate them in any frame (image, lesion, anatomy).
"""
import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x) in [0, 1): two float32 [S, S] arrays."""
  c = (np.arange(size, dtype=np.float32) + 0.5) / size
  y, x = np.meshgrid(c, c, indexing="ij")
  y.flags.writeable = x.flags.writeable = False
  return y, x


def smooth_field(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, terms: int = 6,
                 max_freq: float = 4.0) -> np.ndarray:
  """Smooth random field of unit-scale amplitude (sum of random plane waves), shape of u."""
  freqs = rng.uniform(0.5, max_freq, terms) * 2 * np.pi
  angles = rng.uniform(0, 2 * np.pi, terms)
  phases = rng.uniform(0, 2 * np.pi, terms).astype(np.float32)
  ku = (freqs * np.cos(angles)).astype(np.float32)
  kv = (freqs * np.sin(angles)).astype(np.float32)
  u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
  field = np.zeros(u.shape, np.float32)
  for a, b, p in zip(ku, kv, phases):  # float32 throughout: this is the renderers' hot loop
    field += np.cos(a * u + b * v + p)
  return field * np.float32(np.sqrt(2.0 / terms))


def dot_field(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, count: int,
              extent: float, sigma: tuple[float, float], min_sigma: float) -> np.ndarray:
  """Max of `count` Gaussian dots placed uniformly in a disc of radius `extent`: [S, S] in [0,1]."""
  if count <= 0:
    return np.zeros_like(u)
  radius = extent * np.sqrt(rng.uniform(0, 1, count))
  angle = rng.uniform(0, 2 * np.pi, count)
  sig = np.maximum(rng.uniform(*sigma, count), min_sigma)
  cu = (radius * np.cos(angle)).astype(np.float32)[:, None, None]
  cv = (radius * np.sin(angle)).astype(np.float32)[:, None, None]
  scale = (-0.5 / sig ** 2).astype(np.float32)[:, None, None]
  du, dv = np.asarray(u, np.float32)[None] - cu, np.asarray(v, np.float32)[None] - cv
  # The nearest dot dominates the max, so take the exponential once, after the max.
  return np.exp((scale * (du * du + dv * dv)).max(axis=0))


def line_field(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, freq: float,
               width: float) -> np.ndarray:
  """Wavy parallel lines (value 1 on a line, 0 between): [S, S] in [0, 1]."""
  angle = rng.uniform(0, np.pi)
  warp = np.float32(1.5) * smooth_field(rng, u, v, terms=4, max_freq=6.0)
  ku = np.float32(2 * np.pi * freq * np.cos(angle))
  kv = np.float32(2 * np.pi * freq * np.sin(angle))
  s = np.sin(ku * np.asarray(u, np.float32) + kv * np.asarray(v, np.float32) + warp)
  return np.exp(np.float32(-0.5 / width ** 2) * (s * s))
