"""Decoding and resizing the image and mask files of a release with PIL.

Images are resized to a square `size` x `size` (the whole picture, aspect ratio not kept, so a
lesion mask resized the same way stays aligned), bilinear with PIL's antialiasing; JPEGs are
first decoded at the smallest DCT scale that is still at least `size` (`Image.draft`), which
makes large radiographs fast to read. Masks are resized with nearest neighbour and binarised.

Only 8-bit files are read (FAITHFUL_MODES: the modes PIL converts to "L" / "RGB" without loss of
meaning); every release jaxmm reads ships 8-bit JPEGs and PNGs. A 16-bit or float file (PIL
modes I;16, I, F, ...) is refused rather than rescaled: PIL's conversion would clip 16-bit
values to 255 and turn floats into 0, and a fixed rescale (65535 -> 255) would be wrong for
12-bit radiographs stored in 16 bits, whose display window is a choice for the researcher to
make when converting them to 8 bits.

Lesion masks are 0 (background) / 255 (lesion), as HAM10000's are, and a pixel >= 128 is lesion.
A mask with non-zero pixels but none >= 128 (e.g. one saved as 0/1) is refused instead of read
as empty; an all-zero mask is a valid mask of an image with no lesion drawn (an empty ROI). A
mask must have its image's width and height, or the two would not stay aligned when each is
resized to a square.

A missing, undecodable, non-8-bit or (mask) ill-valued file raises `bad_rows.BadInput` naming
the file.
"""
import numpy as np
from PIL import Image

from jaxmm.data.bad_rows import BadInput

CHANNELS = {"RGB": 3, "L": 1}
# PIL modes whose conversion to "L" / "RGB" keeps what the pixels mean (all 8 bits per channel).
FAITHFUL_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})
LESION_THRESHOLD = 128  # a mask pixel >= this is lesion
# What PIL raises for truncated, corrupt or non-image files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _read(path: str, what: str, decode):
  """`decode(img)` of the opened file, its mode checked; BadInput "missing_<what>",
  "corrupt_<what>" or "unsupported_<what>_mode" naming the file otherwise."""
  try:
    with Image.open(path) as img:
      if img.mode not in FAITHFUL_MODES:
        raise BadInput(f"unsupported_{what}_mode",
                       f"{what} file {path} has PIL mode {img.mode!r} (e.g. 16-bit or float "
                       f"pixels), which cannot be read as 8-bit without losing values; "
                       f"supported modes: {sorted(FAITHFUL_MODES)}. Convert it to 8 bits "
                       f"(choosing the intensity window) first")
      return decode(img)
  except BadInput:
    raise
  except FileNotFoundError:
    raise BadInput(f"missing_{what}", f"{what} file {path} not found") from None
  except _DECODE_ERRORS as e:
    raise BadInput(f"corrupt_{what}", f"cannot decode {what} file {path}: {e}") from None


def image_size(path: str) -> tuple[int, int]:
  """(width, height) of the image at `path`, from its header."""
  return _read(path, "image", lambda img: img.size)


def load_image(path: str, size: int, mode: str = "RGB") -> np.ndarray:
  """The image at `path` as uint8 [size, size, C], C = 3 for "RGB", 1 for "L" (grayscale)."""
  if mode not in CHANNELS:
    raise ValueError(f"unknown image mode {mode!r}; valid modes: {sorted(CHANNELS)}")

  def decode(img):
    img.draft(mode, (size, size))
    return img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)

  pixels = np.asarray(_read(path, "image", decode), np.uint8)
  return pixels.reshape(size, size, CHANNELS[mode])


def load_mask(path: str, size: int, image_path: str | None = None) -> np.ndarray:
  """A segmentation mask (0 background, >= 128 lesion) as uint8 [size, size] in {0, 1}.

  With `image_path`, the mask must have that image's (width, height): BadInput
  "mask_size_mismatch" naming both files and sizes otherwise. A mask with non-zero pixels but
  none >= 128 is BadInput "mask_below_threshold".
  """
  expected = image_size(image_path) if image_path is not None else None

  def decode(img):
    if expected is not None and img.size != expected:
      raise BadInput("mask_size_mismatch",
                     f"mask file {path} is {img.size[0]}x{img.size[1]} (width x height) but "
                     f"its image {image_path} is {expected[0]}x{expected[1]}; they would not "
                     f"stay aligned when both are resized")
    gray = img.convert("L")
    peak = int(np.asarray(gray).max(initial=0))
    if 0 < peak < LESION_THRESHOLD:
      raise BadInput("mask_below_threshold",
                     f"mask file {path} has non-zero pixels but none >= {LESION_THRESHOLD} "
                     f"(largest value {peak}): lesion masks are 0 background / 255 lesion, and "
                     f"this one (saved as 0/1?) would read as empty; save it as 0/255")
    return gray.resize((size, size), Image.Resampling.NEAREST)

  mask = np.asarray(_read(path, "mask", decode))
  return (mask >= LESION_THRESHOLD).astype(np.uint8)
