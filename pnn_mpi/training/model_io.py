"""Saving and loading a trained network as a plain ``.npz`` file.

The file holds the architecture as small arrays and one weight/bias pair per
layer, nothing pickled, so ``np.load(path, allow_pickle=False)`` reads it and a
file from elsewhere can never run code. Zip entries carry a fixed timestamp, so
the same run gives a byte-identical file.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from ..common.files import write_atomically
from ..common.npz_reader import NpzArchive, Refused, file_kind
from ..nn.activations import ACTIVATIONS
from ..nn.losses import OUTPUTS
from ..nn.network import Network
from .config import DTYPES
from .memory import check_model

FORMAT = "pnn_mpi-model"
VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: the same bytes every run


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz archive of ``arrays`` with deterministic bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            with archive.open(entry, "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def model_arrays(net: Network, metadata: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION),
        "sizes": np.array(net.sizes, dtype=np.int64),
        "activation": np.array(net.activation_name),
        "output": np.array(net.output_name),
    }
    for layer, (w, b) in enumerate(zip(net.weights, net.biases), start=1):
        arrays[f"W{layer}"] = w
        arrays[f"b{layer}"] = b
    for key, value in (metadata or {}).items():
        arrays[f"meta_{key}"] = np.array(str(value))
    return arrays


def save_model(path: Path, net: Network, metadata: dict[str, str] | None = None) -> None:
    write_atomically(Path(path), npz_bytes(model_arrays(net, metadata)))


MAX_LAYERS = 1024  # more widths than any network here has: a 'sizes' entry larger is refused unread
MAX_META = 64  # meta_* strings read at most, each at most META_CHARS long
META_CHARS = 4096


def load_model(path: Path) -> tuple[Network, dict[str, str]]:
    """The network saved in ``path`` and its ``meta_*`` strings (dataset, input shape...).

    Only the entries a model has are read, each checked from its headers
    before it is inflated (npz_reader), and the weights only once their shapes
    match ``sizes`` and fit in memory. Anything else -- a missing file, a plain
    .npy, pickled or object arrays, wrong shapes, a size no memory holds -- is
    a UserError naming the file.
    """
    path = Path(path)
    try:
        kind = file_kind(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such model file") from None
    except OSError as exc:
        raise UserError(f"{path}: not a pnn_mpi model ({exc.strerror or exc})") from None
    if kind == "npy":
        raise UserError(f"{path}: not a pnn_mpi model (a single array, not an .npz archive)")
    if kind != "npz":
        raise UserError(f"{path}: not a pnn_mpi model ({'an empty file' if kind == 'empty' else 'not an .npz archive'})")
    try:
        with NpzArchive(path) as archive:
            if "format" not in archive or _text_or_none(archive, "format") != FORMAT:
                raise UserError(f"{path}: not a pnn_mpi model (no '{FORMAT}' format mark)")
            net = _network_from(path, archive)
            metadata = {}
            for name in [n for n in archive.names if n.startswith("meta_")][:MAX_META]:
                metadata[name[5:]] = archive.text(name, META_CHARS)
    except Refused as exc:
        raise UserError(f"{path}: not a pnn_mpi model ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: not a pnn_mpi model ({exc.strerror or exc})") from None
    return net, metadata


def _text_or_none(archive: NpzArchive, name: str) -> str | None:
    try:
        return archive.text(name)
    except Refused:
        return None


def _network_from(path: Path, archive: NpzArchive) -> Network:
    def bad(why: str) -> UserError:
        return UserError(f"{path}: broken pnn_mpi model: {why}")

    def small(name: str, kinds: str, shape=None, ndim=None, max_bytes=4096):
        if name not in archive:
            return None
        try:
            return archive.read(name, kinds=kinds, shape=shape, ndim=ndim, max_bytes=max_bytes)
        except Refused:
            return None

    version = small("version", "iu", shape=())
    if version is None or int(version) != VERSION:
        raise bad(f"format version {'missing or not a whole number' if version is None else int(version)} is not {VERSION}")
    sizes = small("sizes", "iu", ndim=1, max_bytes=8 * MAX_LAYERS)
    if sizes is None or len(sizes) < 2 or (sizes < 1).any():
        raise bad("'sizes' must list two or more positive layer widths")
    activation, output = _text_or_none(archive, "activation"), _text_or_none(archive, "output")
    if activation not in ACTIVATIONS:
        raise bad(f"unknown activation {activation!r}")
    if output not in OUTPUTS:
        raise bad(f"unknown output {output!r}")
    widths = tuple(int(s) for s in sizes)
    expected: dict[str, tuple[int, ...]] = {}
    for layer, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        expected[f"W{layer}"], expected[f"b{layer}"] = (n_in, n_out), (n_out,)
    if "W1" not in archive:
        raise bad("missing array W1")
    try:
        dtype = archive.header("W1").dtype
    except Refused as exc:
        raise UserError(f"{path}: not a pnn_mpi model ({exc})") from None
    if dtype.name not in DTYPES:
        raise bad(f"weights must be one of {', '.join(DTYPES)}")
    for name, shape in expected.items():  # every header first: nothing is inflated unless all fit
        if name not in archive:
            raise bad(f"missing array {name}")
        stored = archive.header(name)
        if stored.shape != shape or stored.dtype.name != dtype.name:
            raise bad(f"{name} has shape {stored.shape} {stored.dtype}, expected {shape} {dtype}")
    check_model(str(path), widths, dtype.itemsize)
    net = Network(widths, activation, output, dtype.name)
    for layer, (w, b) in enumerate(zip(net.weights, net.biases), start=1):
        archive.read(f"W{layer}", shape=w.shape, out=w)
        archive.read(f"b{layer}", shape=b.shape, out=b)
    if not np.isfinite(net.params).all():
        raise bad("parameters hold NaN or infinity")
    return net
