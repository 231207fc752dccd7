"""Reading an image of a subset for the shards, checked where it is first trusted.

The file must be the one the manifest hashed (sha256), have the manifest's size, and decode
whole: JPEGs with ``torchvision.io.decode_jpeg``, the decoder the loader uses, so a file cut
short or garbled is found here, not in the middle of a training run; raw (``pad`` geometry)
images with PIL, which decodes them anyway. A file that does not decode raises
``UnreadableImage`` (``spa-data labels --on-bad-image skip`` leaves such images out).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from spa_common.errors import SpaError
from spa_common.hashing import sha256_bytes


class UnreadableImage(SpaError):
    """An image file that exists but does not decode."""


def read_image(path: Path, entry: dict, image_format: str) -> np.ndarray:
    """The bytes a shard stores for ``entry``: the JPEG file (``jpeg``) or RGB pixels (``raw``), flat uint8."""
    where = f"{path}: image {entry['image_id']!r}"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpaError(f"{where}: cannot read ({e.strerror or e})") from None
    if entry.get("sha256") and sha256_bytes(data) != entry["sha256"]:
        raise SpaError(f"{where}: sha256 differs from manifest.jsonl (file changed since build)")
    try:
        img = Image.open(io.BytesIO(data))
        size = img.size
        if image_format == "raw":
            pixels = np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise UnreadableImage(f"{where}: unreadable image (not an image format PIL knows)") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise UnreadableImage(f"{where}: unreadable image ({e})") from None
    if size != (entry["width"], entry["height"]):
        raise SpaError(f"{where}: is {size[0]}x{size[1]}, manifest says {entry['width']}x{entry['height']}")
    if image_format == "raw":
        return np.ascontiguousarray(pixels).reshape(-1)
    if img.format != "JPEG":
        raise SpaError(f"{where}: is {img.format}, shards store JPEG bytes for this geometry")
    encoded = np.frombuffer(data, dtype=np.uint8)
    problem = jpeg_problem(encoded)
    if problem is not None:
        raise UnreadableImage(f"{where}: unreadable image ({problem})")
    return encoded


def jpeg_problem(encoded: np.ndarray) -> str | None:
    """Why ``decode_jpeg`` (CPU, RGB, as in the loader) fails on these bytes; None when it decodes."""
    import torch

    try:
        decode_jpeg_rgb(torch.from_numpy(encoded.copy()))
    except RuntimeError as e:
        return decoder_message(e)
    return None


def decode_jpeg_rgb(encoded, device="cpu"):
    """``torchvision.io.decode_jpeg`` to RGB: one uint8 tensor or a list of them (a batch), on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def decoder_message(error: BaseException) -> str:
    """The decoder's own words: torchvision prefixes them with its source location."""
    return str(error).strip().splitlines()[-1].rsplit(", ", 1)[-1]
