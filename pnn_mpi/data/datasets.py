"""Which files make up each dataset, where to look for them, and loading a split.

The search order puts an explicit choice first (``--data-dir``, then
``$PNN_MPI_DATA``) and shared system copies last, so a user can always
override what the machine provides; when nothing is found the error says
every place that was tried and how to get the data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from ..common.wording import checksum_mismatch
from . import idx

ROLES = ("train-images", "train-labels", "test-images", "test-labels")
SPLITS = ("train", "test")
ENV_VAR = "PNN_MPI_DATA"
SYSTEM_DIR = Path("/usr/share/datasets")  # shared read-only copies, searched last

_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's identity: file names, canonical payload MD5s, download mirrors."""

    name: str
    title: str
    files: Mapping[str, str]  # role -> basename (without .gz)
    md5: Mapping[str, str]  # basename -> MD5 of the decompressed file
    mirrors: tuple[str, ...]  # URL prefixes; files there are <basename>.gz


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        files=dict(_FILES),
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando article images)",
        files=dict(_FILES),
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    # A user's own data in the same format: the canonical names, but no known
    # checksums and no mirrors. Every other check of the IDX reader still applies.
    "custom": DatasetSpec(
        name="custom",
        title="your own IDX files",
        files=dict(_FILES),
        md5={},
        mirrors=(),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """Look up a dataset by name (case and '_' vs '-' do not matter)."""
    key = str(name).strip().lower().replace("_", "-")
    try:
        return DATASETS[key]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UserError(f"unknown dataset {name!r}; known datasets: {known}") from None


def candidate_dirs(
    name: str,
    data_dir: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
) -> list[Path]:
    """Folders to search, best first; an explicit ``data_dir`` is the only one.

    ``$PNN_MPI_DATA`` may name a folder of datasets or one dataset's folder;
    a folder named after another dataset (``.../mnist`` while looking for
    fashion-mnist) is not searched, since both hold files of the same names.
    Duplicates (e.g. $PNN_MPI_DATA pointing at ./data) are listed once.
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    home = Path.home() if home is None else Path(home)
    dirs = []
    root = env.get(ENV_VAR, "")
    if root:
        root_path = Path(root).expanduser()
        dirs.append(root_path / name)
        if root_path.name == name or root_path.name not in DATASETS:
            dirs.append(root_path)
    dirs += [
        cwd / "data" / name,
        home / ".cache" / "pnn_mpi" / name,
        SYSTEM_DIR / name,
    ]
    return list(dict.fromkeys(dirs))


def find_file(directory: str | os.PathLike, basename: str) -> Path | None:
    """The raw file if present (it allows seeking), else ``<basename>.gz``, else None."""
    # os.path.isfile, unlike Path.is_file, answers False for an unreadable
    # parent instead of raising PermissionError.
    directory = Path(directory)
    for candidate in (directory / basename, directory / f"{basename}.gz"):
        if os.path.isfile(candidate):
            return candidate
    return None


def _missing(spec: DatasetSpec, directory: Path) -> list[str]:
    return [b for b in spec.files.values() if find_file(directory, b) is None]


def _why_not(spec: DatasetSpec, directory: Path) -> str:
    if not os.path.isdir(directory):
        return "no such folder (or not readable)"
    missing = _missing(spec, directory)
    if len(missing) == len(spec.files):
        return "no dataset files"
    return "missing " + ", ".join(f"{b}[.gz]" for b in missing)


def locate(
    name: str,
    data_dir: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
) -> Path:
    """The first candidate folder holding all four files of dataset ``name``."""
    spec = get_spec(name)
    dirs = candidate_dirs(spec.name, data_dir, env, cwd, home)
    for directory in dirs:
        if os.path.isdir(directory) and not _missing(spec, directory):
            return directory
    looked = "; ".join(f"{d} ({_why_not(spec, d)})" for d in dirs)
    if data_dir is not None:
        how = (
            f"--data-dir was given, so no other place was searched; fetch it there with "
            f"`python -m pnn_mpi download --dataset {spec.name} --dir {dirs[0]}` or point "
            f"--data-dir at a folder holding the four files"
        )
    else:
        how = f"fetch it with `python -m pnn_mpi download --dataset {spec.name}` or set {ENV_VAR} to a folder holding the four files"
    raise UserError(f"dataset {spec.name} not found; looked in: {looked}; {how}")


def _split_paths(spec: DatasetSpec, directory: Path, split: str) -> tuple[Path, Path]:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    paths = []
    for role in (f"{split}-images", f"{split}-labels"):
        basename = spec.files[role]
        path = find_file(directory, basename)
        if path is None:
            raise UserError(f"{directory}: missing {basename} (or {basename}.gz) of {spec.name}")
        paths.append(path)
    return paths[0], paths[1]


def split_headers(spec: DatasetSpec, directory: str | os.PathLike, split: str) -> tuple[idx.IdxHeader, idx.IdxHeader]:
    """The (images, labels) headers of a split, checked to agree on the record count."""
    images_path, labels_path = _split_paths(spec, Path(directory), split)
    images = idx.read_header(images_path, "images")
    labels = idx.read_header(labels_path, "labels")
    if images.count != labels.count:
        raise UserError(f"image/label count mismatch: {images_path} holds {images.count} images but {labels_path} holds {labels.count} labels")
    return images, labels


def split_count(spec: DatasetSpec, directory: str | os.PathLike, split: str) -> int:
    """Records in a split, read from the headers, so ranks can size their slices."""
    images, _ = split_headers(spec, Path(directory), split)
    return images.count


def load_split(
    spec: DatasetSpec,
    directory: str | os.PathLike,
    split: str,
    start: int = 0,
    stop: int | None = None,
    *,
    verify: bool = False,
    check_end: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, rows*cols) and labels (n,) for records ``[start, stop)``.

    ``verify`` checks each file against its canonical payload MD5 (which
    decompresses whole files); otherwise only the slice is read.
    """
    images, labels = split_headers(spec, Path(directory), split)

    def md5_of(header: idx.IdxHeader) -> str | None:
        return spec.md5.get(header.path.name.removesuffix(".gz")) if verify else None

    x = idx.read_records(images.path, start, stop, expect="images", md5=md5_of(images), check_end=check_end)
    y = idx.read_records(labels.path, start, stop, expect="labels", md5=md5_of(labels), check_end=check_end)
    return x, y


def verify_files(spec: DatasetSpec, directory: str | os.PathLike) -> None:
    """Check every file's payload MD5 against the canonical one, where one is known (streaming)."""
    directory = Path(directory)
    missing = _missing(spec, directory)
    if missing:
        names = ", ".join(f"{b}[.gz]" for b in missing)
        raise UserError(f"{directory}: missing {names} of {spec.name}")
    for basename in spec.files.values():
        want = spec.md5.get(basename)
        if want is None:  # a user's own files: no canonical sum to compare with
            continue
        path = find_file(directory, basename)
        assert path is not None, basename  # the check for missing files above found it
        got = idx.payload_md5(path)
        if got != want:
            raise UserError(f"{path}: {checksum_mismatch(got, want, basename)}")
