"""What makes two processes -- or a run and its resumption -- the same run.

Every rank of a job must run the same resolved configuration on the same data:
an MPMD launch (``mpiexec -n 1 ... --epochs 1 : -n 1 ... --epochs 2``) or a
node with another environment (another ``PNN_MPI_DATA``, no numba) would
otherwise hang in a collective, die in ``MPI_ERR_TRUNCATE``, or silently
average two different networks. ``agree`` compares every rank's description
in one allgather, the first collective of a run, and fails every rank alike
with one line naming the first difference.

The data's identity -- the dataset, and per file its name, header shape, size
and a fingerprint of its first and last MiB (for ``custom`` data, whose
payloads have no known checksum; canonical files are checked against their
MD5 on every run anyway) -- is also what a checkpoint records, so ``--resume``
with other data is refused, not trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ..common.errors import UserError
from ..common.version import __version__
from ..common.wording import quote
from ..data import datasets
from .config import TrainConfig, runs_batch_one_kernel

_SAMPLE = 1 << 20  # bytes fingerprinted at each end of a custom data file
_WHERE = ("out", "data_dir")  # where files are may differ between ranks; what they hold may not (data_identity)


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as this process will run it, including what its environment decides."""
    record = {k: v for k, v in cfg.as_dict().items() if k not in _WHERE}
    record["kernel"] = kernel_used(cfg)
    record["pnn_mpi"] = __version__
    return record


def kernel_used(cfg: TrainConfig) -> str:
    """The kernel ``--kernel`` comes to here. ``auto`` takes numba only where a batch-1 kernel runs
    (config.runs_batch_one_kernel, as train.Run.prepare decides) and numba is installed; every other run
    takes the numpy step, so ranks with and without numba agree on it."""
    from ..nn.kernels import numba_available

    if cfg.kernel != "auto":
        return cfg.kernel
    batch_one = not cfg.full_batch and runs_batch_one_kernel(int(cfg.batch_size), cfg.schedule, cfg.kernel)
    return "numba" if batch_one and numba_available() else "numpy"


def _fingerprint(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(handle.read(_SAMPLE))
        if size > 2 * _SAMPLE:
            handle.seek(size - _SAMPLE)
        digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()[:32]


def data_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The dataset this process would train on, as headers and fingerprints (UserError if not found)."""
    spec = datasets.get_spec(cfg.dataset)
    directory = datasets.locate(cfg.dataset, cfg.data_dir)
    files: dict[str, Any] = {}
    for split in datasets.SPLITS:
        for header in datasets.split_headers(spec, directory, split):
            entry: dict[str, Any] = {"shape": list(header.shape)}
            if not spec.md5:  # no canonical payload to check it against: fingerprint the bytes
                try:
                    entry.update(file=header.path.name, bytes=os.path.getsize(header.path), sample_sha256=_fingerprint(header.path))
                except OSError as exc:
                    raise UserError(f"{quote(header.path)}: cannot read: {exc.strerror or exc}") from None
            files[f"{split}-{'images' if len(header.shape) == 3 else 'labels'}"] = entry
    return {"dataset": spec.name, "files": files}


def first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, a's value, b's value) where two JSON-like values first differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                return f"{where}{key}", a.get(key, "(missing)"), b.get(key, "(missing)")
            found = first_difference(a[key], b[key], f"{where}{key}.")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(isinstance(v, (dict, list)) for v in a + b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}{i}.")
            if found:
                return found
        return None
    return None if a == b else (where.rstrip("."), a, b)


def as_json(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), so stored and live values compare alike."""
    return json.loads(json.dumps(value))


def agree(world, what: str, mine: dict[str, Any]) -> None:
    """One allgather: every rank must describe the run exactly as rank 0 does.

    Every rank gets the same list, so every rank raises the same UserError.
    """
    everyone = world.allgather(as_json(mine))
    for rank, theirs in enumerate(everyone[1:], start=1):
        found = first_difference(everyone[0], theirs)
        if found:
            key, ours, other = found
            raise UserError(
                f"the ranks disagree on the {what}: rank 0 has {key} = {quote(ours)}, rank {rank} has {quote(other)}; "
                f"every rank must run the same {what} (an MPMD launch, or another environment on some node?)"
            )
