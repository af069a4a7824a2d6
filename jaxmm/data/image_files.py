"""Decoding and resizing the image and mask files of a release with PIL.

Images are resized to a square `size` x `size` (the whole picture, aspect ratio not kept, so a
lesion mask resized the same way stays aligned), bilinear with PIL's antialiasing; JPEGs are
first decoded at the smallest DCT scale that is still at least `size` (`Image.draft`), which
makes large radiographs fast to read. Masks are resized with nearest neighbour and binarised.
A missing or undecodable file raises `bad_rows.BadInput` naming the file.
"""
import numpy as np
from PIL import Image

from jaxmm.data.bad_rows import BadInput

CHANNELS = {"RGB": 3, "L": 1}
# What PIL raises for truncated, corrupt or non-image files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open_resized(path: str, size: int, mode: str, resample, what: str) -> Image.Image:
  try:
    with Image.open(path) as img:
      if resample != Image.Resampling.NEAREST:
        img.draft(mode, (size, size))
      return img.convert(mode).resize((size, size), resample)
  except FileNotFoundError:
    raise BadInput(f"missing_{what}", f"{what} file {path} not found") from None
  except _DECODE_ERRORS as e:
    raise BadInput(f"corrupt_{what}", f"cannot decode {what} file {path}: {e}") from None


def load_image(path: str, size: int, mode: str = "RGB") -> np.ndarray:
  """The image at `path` as uint8 [size, size, C], C = 3 for "RGB", 1 for "L" (grayscale)."""
  if mode not in CHANNELS:
    raise ValueError(f"unknown image mode {mode!r}; valid modes: {sorted(CHANNELS)}")
  pixels = np.asarray(_open_resized(path, size, mode, Image.Resampling.BILINEAR, "image"),
                      np.uint8)
  return pixels.reshape(size, size, CHANNELS[mode])


def load_mask(path: str, size: int) -> np.ndarray:
  """A segmentation mask (0 background, >= 128 lesion) as uint8 [size, size] in {0, 1}."""
  mask = np.asarray(_open_resized(path, size, "L", Image.Resampling.NEAREST, "mask"))
  return (mask >= 128).astype(np.uint8)
