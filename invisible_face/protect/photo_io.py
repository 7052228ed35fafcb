"""Reading and writing user photos: content sniffed from bytes, EXIF orientation applied, every
piece of metadata (EXIF, GPS, ICC, text chunks) left out of the output.

Still photos only: an animation (animated GIF, APNG, animated WebP) or a multi-page file (TIFF) is
refused with ``PhotoUnsupported`` naming what it is, rather than answered with its first frame
alone. (A multi-picture JPEG from a phone, MPO, is read as its first, main picture.)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = 60_000_000  # refuse decompression bombs (PIL raises past 2x this)
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


class PhotoError(ValueError):
    """The bytes are not a photo we can protect (not an image, truncated, too large)."""


class PhotoTooLarge(PhotoError):
    """More pixels than allowed, or a decompression bomb (told from its header, before decoding)."""


class PhotoUnsupported(PhotoError):
    """A readable image that is not a still photo: an animation or a multi-page file."""


def frame_count(img: Image.Image) -> int:
    """Frames (or pages) in an opened image, from its headers and chunk structure (no pixel decoding)."""
    return int(getattr(img, "n_frames", 1) or 1)


def unsupported_reason(img: Image.Image) -> str | None:
    """Why an opened image cannot be protected as one photo, or None for a still photo."""
    fmt = img.format or "image"
    frames = frame_count(img)
    if frames <= 1 or fmt == "MPO":
        return None
    unit = "page" if fmt == "TIFF" else "frame"
    name = {"PNG": "APNG", "WEBP": "WebP"}.get(fmt, fmt)
    what = f"multi-page {fmt} ({frames} pages)" if fmt == "TIFF" else f"animated {name} ({frames} frames)"
    return (f"{what}: only still photos are protected, and answering with the first {unit} alone would drop "
            f"the others; send each {unit} as a still image")


@dataclass
class Photo:
    rgb: np.ndarray            # H x W x 3 uint8, upright
    alpha: np.ndarray | None   # H x W uint8 when the input had transparency
    format: str                # PIL format name of the input, e.g. "JPEG"


def read_photo(data: bytes, max_pixels: int = Image.MAX_IMAGE_PIXELS) -> Photo:
    """Decode bytes (whatever the file name says) into an upright RGB array (+ alpha)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or "PNG"
            if img.width * img.height > max_pixels:
                raise PhotoTooLarge(f"image of {img.width}x{img.height} pixels is over the limit of {max_pixels}")
            reason = unsupported_reason(img)
            if reason:
                raise PhotoUnsupported(reason)
            img = ImageOps.exif_transpose(img)  # also loads the pixels: truncation fails here
            alpha = None
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                alpha = np.asarray(rgba)[:, :, 3].copy()
                rgb = np.asarray(rgba.convert("RGB")).copy()
            elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
                rgb = np.asarray(img.convert("I")).astype(np.float64)
                rgb = np.repeat((rgb / max(rgb.max(), 1) * 255).round().astype(np.uint8)[:, :, None], 3, axis=2)
            else:
                rgb = np.asarray(img.convert("RGB")).copy()
    except PhotoError:
        raise
    except Image.DecompressionBombError as err:
        raise PhotoTooLarge(f"refused as a decompression bomb: {err}") from err
    except Exception as err:  # PIL raises many types for bad input
        raise PhotoError(f"not a readable image: {type(err).__name__}: {err}") from err
    return Photo(rgb, alpha, fmt)


def write_photo(photo: Photo, rgb: np.ndarray, jpeg_quality: int = 95) -> bytes:
    """Encode in the input's format (JPEG stays JPEG, PNG stays PNG) with no metadata at all."""
    img = Image.fromarray(rgb, "RGB")
    if photo.alpha is not None:
        img = img.copy()
        img.putalpha(Image.fromarray(photo.alpha, "L"))
    fmt = photo.format if photo.format in FORMATS else "PNG"
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=jpeg_quality, subsampling=0)
    else:
        img.save(buf, fmt)
    return buf.getvalue()
