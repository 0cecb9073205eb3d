"""Training images from Debian and PyPI packages (nothing is downloaded at run time).

* style: Van Gogh's *Starry Night*, ``starry_night.jpg`` in Debian's ``opencv-doc``;
* content: colour photos bundled with scikit-image (``skimage.data``) and the example
  photos of ``opencv-doc`` (``/usr/share/doc/opencv-doc/examples/data``).

``HELD_OUT`` photos are not trained on; the README's before/after pictures use them.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np

from mdl_tvm.core.errors import DatasetMissingError
from mdl_tvm.core.io import atomic_output

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
STYLE_IMAGE = OPENCV_DATA / "starry_night.jpg"
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png")
OPENCV_PHOTOS = ("aloeL.jpg", "apple.jpg", "baboon.jpg", "butterfly.jpg", "home.jpg",
                 "leuvenA.jpg", "messi5.jpg", "orange.jpg", "squirrel_cls.jpg",
                 "ela_original.jpg", "aero1.jpg", "board.jpg", "rubberwhale1.png", "graf1.png",
                 "Blender_Suzanne1.jpg", "smarties.png", "pic2.png", "left.jpg")
SKIMAGE_HELD_OUT = ("chelsea.png",)
HELD_OUT = (*SKIMAGE_HELD_OUT, "fruits.jpg", "building.jpg")


MAX_PIXELS = 50_000_000  # larger images are refused before decoding (~150 MB as RGB)


def read_image(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """An image file as float32 RGB in [0, 1], shape (H, W, 3).

    The header is checked before decoding: images above `MAX_PIXELS` pixels are refused.
    With `max_side`, the image is reduced while it is read (JPEG decodes at a smaller
    scale) so that its long side is at most about twice `max_side`: what goes to float32 is
    small whatever the file holds.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist.
    ValueError
        When the file is not an image Pillow can read, or has too many pixels.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {str(path)!r}; give a .jpg or .png path")
    try:
        with warnings.catch_warnings():  # our own limit below names the fix
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{str(path)!r} is {width}x{height} pixels, more than the "
                                 f"{MAX_PIXELS:,} MobileDL decodes; scale it down first")
            if max_side is not None and max(width, height) > 2 * max_side:
                img.draft("RGB", (2 * max_side, 2 * max_side))
                img.thumbnail((2 * max_side, 2 * max_side), Image.Resampling.BICUBIC)
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError,
            EOFError, struct.error) as err:  # what Pillow raises for broken files
        raise ValueError(f"{str(path)!r} is not an image Pillow can read ({err}); give a "
                         ".jpg or .png file") from None
    return np.asarray(rgb, dtype=np.float32) / 255.0


def write_image(array: np.ndarray, path: str | Path) -> Path:
    """Write float RGB in [0, 1], (H, W, 3), to `path` (format from the suffix), atomically."""
    from PIL import Image

    path = Path(path)
    data = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_output(path, suffix=path.suffix) as tmp:
        Image.fromarray(data).save(tmp)
    return path


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of float RGB (H, W, 3) in [0, 1]."""
    from PIL import Image

    img = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    out = img.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(out, dtype=np.float32) / 255.0


def _skimage_photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as err:
        raise DatasetMissingError("training photos need scikit-image: pip install "
                                  "'mdl-tvm[apps]'") from err
    return read_image(Path(skimage.data.__file__).parent / name)


def _opencv_photo(name: str) -> np.ndarray:
    path = OPENCV_DATA / name
    if not path.is_file():
        raise DatasetMissingError(f"{path} is missing: apt-get install opencv-doc "
                                  "(scripts/setup.sh installs it)")
    return read_image(path)


def held_out_photo(name: str) -> np.ndarray:
    """One of ``HELD_OUT`` as float RGB in [0, 1]."""
    return _skimage_photo(name) if name in SKIMAGE_HELD_OUT else _opencv_photo(name)


def style_image() -> np.ndarray:
    """*Starry Night* as float RGB in [0, 1] (752x600)."""
    return _opencv_photo(STYLE_IMAGE.name)


def content_photos() -> list[np.ndarray]:
    """The training photos (float RGB in [0, 1], various sizes)."""
    return ([_skimage_photo(n) for n in SKIMAGE_PHOTOS]
            + [_opencv_photo(n) for n in OPENCV_PHOTOS])
