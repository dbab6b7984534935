"""Images (and labels) for ``evaluate`` and ``predict``, read block by block.

A file handed to these commands may be far larger than memory, or a small
``.gz`` that inflates to gigabytes. Everything that can be refused from a
header is refused first (wrong kind of file, dtype, shape, a pixel count the
model does not take, more records than the compressed size can hold); then
the file is streamed in blocks of ``evaluate.CHUNK`` images, so one block is
in memory at a time, whatever the file declares. Scoring block by block adds
the same per-chunk sums in the same order as scoring the whole array, so
``evaluate`` still reproduces the accuracy training reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..common.errors import UserError
from ..common.npz_reader import NpyFile, Refused, file_kind
from ..nn.evaluate import CHUNK
from . import idx


@dataclass
class Images:
    """An image file whose header has been checked: its count, pixels per image, and its blocks."""

    path: str
    count: int
    shape: tuple[int, ...]  # the whole array's, as declared
    blocks: Callable[[], Iterator[np.ndarray]]  # (rows, pixels) uint8, or floats in [0, 1]

    @property
    def pixels(self) -> int:
        return math.prod(self.shape[1:])

    def check_for(self, inputs: int) -> None:
        """Refuse, before reading pixels, images the model cannot take."""
        if len(self.shape) < 2:
            raise UserError(f"{self.path}: expected images, got an array of shape {self.shape}")
        if self.count == 0:
            raise UserError(f"{self.path}: holds no images")
        if self.pixels != inputs:
            raise UserError(f"{self.path}: images have {self.pixels} pixels, the model takes {inputs}")


def open_images(path: str, stop: int | None = None, idx_only: bool = False) -> Images:
    """IDX images (raw or .gz), or a ``.npy`` array when the name ends in .npy; the first ``stop`` at most."""
    if path.endswith(".npy") and not idx_only:
        return _npy_images(path)
    header = idx.read_header(path, "images")
    count = header.count if stop is None else min(header.count, stop)
    return Images(path, count, (count, *header.shape[1:]), lambda: idx.iter_records(path, count, expect="images", chunk=CHUNK))


def _npy_images(path: str) -> Images:
    def refuse(why: str) -> UserError:
        return UserError(f"{path}: not a readable .npy array ({why})")

    try:
        kind = file_kind(path)
        if kind == "npz":
            raise UserError(f"{path}: an .npz archive, not a .npy array: save one array with np.save(path, images)")
        with NpyFile(path) as npy:
            header = npy.header
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    except Refused as exc:
        raise refuse(str(exc)) from None
    if header.dtype != np.uint8 and header.dtype.kind != "f":
        raise UserError(f"{path}: expected uint8 pixels or floats in [0, 1], got {header.dtype}")
    shape = header.shape

    def blocks() -> Iterator[np.ndarray]:
        lowest, highest = np.inf, -np.inf
        try:
            with NpyFile(path) as npy:
                for block in npy.rows(CHUNK):
                    block = block.reshape(len(block), -1)
                    if block.dtype.kind == "f" and block.size:  # NaN propagates, and is refused below
                        lowest, highest = np.minimum(lowest, block.min()), np.maximum(highest, block.max())
                    yield block
        except Refused as exc:
            raise refuse(str(exc)) from None
        except OSError as exc:
            raise refuse(exc.strerror or str(exc)) from None
        if not (lowest >= 0 and highest <= 1):  # after the last block: the range over the whole file
            raise UserError(f"{path}: float pixels must lie in [0, 1], found {lowest:g} to {highest:g} (save uint8 pixels 0..255, or divide by 255)")

    return Images(path, shape[0] if shape else 0, shape, blocks)


def labelled_blocks(
    images: Images, labels_path: str, stop: int | None = None, md5: dict[str, str | None] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) blocks of an IDX image file and its label file (the first ``stop``), read in step.

    ``md5`` maps each path to the payload MD5 it must have (None: not checked).
    """
    md5 = md5 or {}
    labels = idx.read_header(labels_path, "labels")
    if (labels.count if stop is None else min(labels.count, stop)) != images.count:
        raise UserError(f"{images.path} holds {images.count} images but {labels_path} holds {labels.count} labels")
    picture_blocks = idx.iter_records(images.path, images.count, expect="images", chunk=CHUNK, md5=md5.get(images.path))
    label_blocks = idx.iter_records(labels_path, images.count, expect="labels", chunk=CHUNK, md5=md5.get(labels_path))
    for pictures in picture_blocks:
        yield pictures, next(label_blocks)
    for _ in label_blocks:  # checks the label file's end (and MD5)
        pass
