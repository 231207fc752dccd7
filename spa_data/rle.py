"""COCO compressed RLE, read in numpy: run lengths for the label stage, masks for the loader.

The format of pycocotools' ``rleFrString``: each count is little-endian 5-bit groups in chars
``48 + g`` (``+ 32``: more groups follow; bit 16 of the last group: negative); counts from the
third on are deltas to the one two back. Runs alternate 0s and 1s (0s first) over the image in
column-major order. Neither caller needs pycocotools (the loader workers go without it).
"""
from __future__ import annotations

from typing import Union

import numpy as np

from spa_common.errors import SpaError


def rle_counts(counts: Union[str, bytes]) -> np.ndarray:
    """Run lengths (int64) of a compressed COCO RLE string: ``rleFrString``, vectorised."""
    chars = np.frombuffer(counts.encode() if isinstance(counts, str) else counts, np.uint8) - np.uint8(48)
    if not len(chars):
        return np.zeros(0, dtype=np.int64)
    if chars.max() > 63 or chars[-1] >= 32:   # a char outside '0'..'o', or a count cut short
        raise SpaError(f"mask RLE {bytes(chars[:16] + 48)!r}...: not a COCO compressed RLE string")
    last = np.flatnonzero(chars < 32)
    first = np.empty_like(last)
    first[0], first[1:] = 0, last[:-1] + 1
    shift = 5 * (np.arange(len(chars)) - np.repeat(first, last - first + 1))
    x = np.add.reduceat((chars & 31).astype(np.int64) << shift, first)
    x -= (chars[last] & 16).astype(bool) << (shift[last] + 5)        # sign-extend the last group
    x[1::2] = x[1::2].cumsum()
    x[2::2] = x[2::2].cumsum()
    return x


def decode_rle(counts: Union[str, bytes], height: int, width: int) -> np.ndarray:
    """The (height, width) uint8 mask of a compressed COCO RLE string; SpaError when the runs do
    not tile exactly that many pixels."""
    runs = rle_counts(counts)
    if not len(runs):
        return np.zeros((height, width), dtype=np.uint8)
    if runs.sum() != height * width or (runs < 0).any():
        raise SpaError(f"mask RLE does not describe a {height}x{width} mask")
    bits = np.arange(len(runs), dtype=np.uint8) & 1
    return np.repeat(bits, runs).reshape(width, height).T
