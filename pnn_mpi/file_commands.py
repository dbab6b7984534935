"""The commands that work on files, without a launcher: download, evaluate, predict.

``download`` fetches dataset files; ``evaluate`` and ``predict`` load a saved
model and score it or apply it. (``bench`` and ``study`` have modules of their own.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from . import datasets, idx
from .download import download
from .errors import UserError
from .evaluate import evaluate, predict
from .model_io import load_model
from .options import Parser, positive_int
from .wording import os_reason


def cmd_download(argv: list[str]) -> int:
    p = Parser(prog="python -m pnn_mpi download", description="Fetch a dataset from public mirrors, verify the MD5 of every payload, and store it atomically.")
    p.add_argument("--dataset", choices=list(datasets.DATASETS), default="mnist", help="which dataset (default: mnist)")
    p.add_argument("--dir", metavar="DIR", help="where to store the files (default: ./data/DATASET, where training looks)")
    p.add_argument("--mirror", action="append", metavar="URL|DIR",
                   help="try this mirror instead of the built-in ones (repeatable, tried in order): an http(s) URL prefix, "
                        "a file:// URL or a local folder holding the .gz (or raw) files")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing if training would already find the dataset (in --dir, or where training looks)")
    args = p.parse_args(argv)
    if args.if_missing:
        try:
            found = datasets.locate(args.dataset, args.dir)
        except UserError:
            pass
        else:
            print(f"{args.dataset}: found in {found}")
            return 0
    where = download(args.dataset, args.dir, args.mirror)
    print(f"{args.dataset}: all files verified in {where}")
    return 0


def _model_input(net, images: np.ndarray, source: str) -> np.ndarray:
    """``images`` flattened to rows of the model's input width, or a UserError."""
    if images.ndim < 2:
        raise UserError(f"{source}: expected images, got an array of shape {images.shape}")
    if len(images) == 0:
        raise UserError(f"{source}: holds no images")
    flat = images.reshape(len(images), -1)
    if flat.shape[1] != net.sizes[0]:
        raise UserError(f"{source}: images have {flat.shape[1]} pixels, the model takes {net.sizes[0]}")
    return flat


def cmd_evaluate(argv: list[str]) -> int:
    p = Parser(prog="python -m pnn_mpi evaluate", description="Score a saved model on a test set: the dataset it was trained on, or IDX files you name.")
    p.add_argument("--model", required=True, metavar="FILE", help="a model.npz saved by training")
    p.add_argument("--dataset", choices=list(datasets.DATASETS), help="test set to use (default: the one the model was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset (default: searched as for training)")
    p.add_argument("--test-size", type=positive_int, metavar="N", help="use only the first N test samples")
    p.add_argument("--images", metavar="FILE", help="an IDX image file to score instead of a dataset's test set (needs --labels)")
    p.add_argument("--labels", metavar="FILE", help="the IDX label file that goes with --images")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    net, meta = load_model(Path(args.model))
    if bool(args.images) != bool(args.labels):
        raise UserError("--images and --labels go together")
    if args.images:
        stop = args.test_size
        images = idx.read_records(args.images, 0, _limit(args.images, "images", stop), expect="images", check_end=True)
        labels = idx.read_records(args.labels, 0, _limit(args.labels, "labels", stop), expect="labels", check_end=True)
        if len(images) != len(labels):
            raise UserError(f"{args.images} holds {len(images)} images but {args.labels} holds {len(labels)} labels")
        source = args.images
    else:
        name = args.dataset or meta.get("dataset", "mnist")
        spec = datasets.get_spec(name)
        directory = datasets.locate(name, args.data_dir)
        count = datasets.split_count(spec, directory, "test")
        images, labels = datasets.load_split(spec, directory, "test", 0, min(count, args.test_size or count), verify=True, check_end=True)
        source = f"{name} test set in {directory}"
    classes = net.sizes[-1]  # the model's outputs: as many classes as its training data had
    if len(labels) and int(labels.max()) >= classes:
        raise UserError(f"{args.labels or source}: holds label {int(labels.max())}, but the model {args.model} knows only {classes} classes (0..{classes - 1})")
    accuracy, loss = evaluate(net, _model_input(net, images, source), labels.astype(np.intp))
    if args.json:
        print(json.dumps({"test_accuracy": accuracy, "test_loss": loss, "samples": len(labels), "source": source}))
    else:
        print(f"test accuracy {accuracy:.2%} (loss {loss:.4f}) on {len(labels)} images of the {source}")
    return 0


def _limit(path: str, expect: str, stop: int | None) -> int:
    count = idx.read_header(path, expect).count
    return count if stop is None else min(count, stop)


def _load_images(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        try:
            images = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npy array ({exc})") from None
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise UserError(f"{path}: expected uint8 pixels or floats in [0, 1], got {images.dtype}")
        if images.dtype.kind == "f" and images.size and not (images.min() >= 0 and images.max() <= 1):
            raise UserError(
                f"{path}: float pixels must lie in [0, 1], found {images.min():g} to {images.max():g} "
                f"(save uint8 pixels 0..255, or divide by 255)"
            )
        return images
    return idx.read_records(path, 0, None, expect="images", check_end=True)


def cmd_predict(argv: list[str]) -> int:
    p = Parser(prog="python -m pnn_mpi predict", description="Predict the class of every image in an IDX file or a .npy array with a saved model.")
    p.add_argument("--model", required=True, metavar="FILE", help="a model.npz saved by training")
    p.add_argument("--images", required=True, metavar="FILE",
                   help="IDX images (raw or .gz), or a .npy array of shape (n, rows, cols) or (n, pixels): uint8 pixels, or floats already in [0, 1]")
    p.add_argument("--out", metavar="FILE", help="write the predictions to FILE (.npy, or text with one label per line); default: print them")
    args = p.parse_args(argv)
    net, _ = load_model(Path(args.model))
    found = predict(net, _model_input(net, _load_images(args.images), args.images))
    if args.out is None:
        sys.stdout.write("".join(f"{label}\n" for label in found))
    else:
        try:
            if args.out.endswith(".npy"):
                np.save(args.out, found)
            else:
                Path(args.out).write_text("".join(f"{label}\n" for label in found))
        except OSError as exc:
            raise UserError(f"--out {args.out}: cannot write there ({os_reason(exc)})") from None
    return 0

