"""Saving and loading a trained network as a plain ``.npz`` file.

The file holds the architecture as small arrays and one weight/bias pair per
layer, nothing pickled, so ``np.load(path, allow_pickle=False)`` reads it and a
file from elsewhere can never run code. Zip entries carry a fixed timestamp, so
the same run gives a byte-identical file.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .activations import ACTIVATIONS
from .config import DTYPES
from .errors import UserError
from .losses import OUTPUTS
from .network import Network

FORMAT = "pnn_mpi-model"
VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: the same bytes every run


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    A crash or a full disk leaves either the old file or the new one, never
    half of one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give; mkstemp makes 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def load_model(path: Path) -> tuple[Network, dict[str, str]]:
    """The network saved in ``path`` and its ``meta_*`` strings (dataset, input shape...).

    Anything else -- a missing file, a plain .npy, pickled or object arrays,
    wrong shapes -- is a UserError naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
            raise UserError(f"{path}: not a pnn_mpi model ({'an empty file' if not head else 'not an .npz archive'})")
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{path}: not a pnn_mpi model (a single array, not an .npz archive)")
        with loaded as archive:
            arrays = {name.removesuffix(".npy"): archive[name] for name in archive.files}
    except FileNotFoundError:
        raise UserError(f"{path}: no such model file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: not a pnn_mpi model ({_first_line(exc)})") from None
    if str(arrays.get("format", "")) != FORMAT:
        raise UserError(f"{path}: not a pnn_mpi model (no '{FORMAT}' format mark)")
    metadata = {name[5:]: str(value) for name, value in arrays.items() if name.startswith("meta_")}
    return _network_from(path, arrays), metadata


def _network_from(path: Path, arrays: dict[str, np.ndarray]) -> Network:
    def bad(why: str) -> UserError:
        return UserError(f"{path}: broken pnn_mpi model: {why}")

    version = arrays.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu" or int(version) != VERSION:
        raise bad(f"format version {version} is not {VERSION}")
    sizes = arrays.get("sizes")
    if sizes is None or sizes.ndim != 1 or len(sizes) < 2 or sizes.dtype.kind not in "iu" or (sizes < 1).any():
        raise bad("'sizes' must list two or more positive layer widths")
    activation, output = str(arrays.get("activation")), str(arrays.get("output"))
    if activation not in ACTIVATIONS:
        raise bad(f"unknown activation {activation!r}")
    if output not in OUTPUTS:
        raise bad(f"unknown output {output!r}")
    first = arrays.get("W1")
    if first is None or first.dtype.name not in DTYPES:
        raise bad(f"weights must be one of {', '.join(DTYPES)}")
    widths = tuple(int(s) for s in sizes)
    for layer, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        for name, shape in ((f"W{layer}", (n_in, n_out)), (f"b{layer}", (n_out,))):
            stored = arrays.get(name)
            if stored is None:
                raise bad(f"missing array {name}")
            if stored.shape != shape or stored.dtype != first.dtype:
                raise bad(f"{name} has shape {stored.shape} {stored.dtype}, expected {shape} {first.dtype}")
    net = Network(widths, activation, output, first.dtype)
    for layer, (w, b) in enumerate(zip(net.weights, net.biases), start=1):
        w[...] = arrays[f"W{layer}"]
        b[...] = arrays[f"b{layer}"]
    if not np.isfinite(net.params).all():
        raise bad("parameters hold NaN or infinity")
    return net


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
