"""The commands that work on files, without a launcher: download, evaluate, predict, resume-ranks.

``download`` fetches dataset files; ``evaluate`` and ``predict`` load a saved
model and score it or apply it; ``resume-ranks`` tells a job script how many
ranks a run folder's checkpoint resumes with. (``bench`` and ``study`` have
modules of their own.)
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from ..common.files import write_atomically
from ..common.wording import os_reason
from ..data import datasets
from ..data.download import download
from ..data.image_files import labelled_blocks, open_images
from ..nn.evaluate import predict, probabilities, score
from ..training import checkpoint
from ..training.memory import check_model
from ..training.model_io import load_model
from ..training.options import Parser, positive_int


def cmd_download(argv: list[str]) -> int:
    p = Parser(prog="python -m pnn_mpi download", description="Fetch a dataset from public mirrors, verify the MD5 of every payload, and store it atomically.")
    fetchable = [name for name, spec in datasets.DATASETS.items() if spec.md5]  # 'custom' has nothing to fetch
    p.add_argument("--dataset", choices=fetchable, default="mnist", help="which dataset (default: mnist)")
    p.add_argument("--dir", metavar="DIR", help="where to store the files (default: ./data/DATASET, where training looks)")
    p.add_argument(
        "--mirror",
        action="append",
        metavar="URL|DIR",
        help="try this mirror instead of the built-in ones (repeatable, tried in order): an http(s) URL prefix, "
        "a file:// URL or a local folder holding the .gz (or raw) files",
    )
    p.add_argument("--if-missing", action="store_true", help="do nothing if training would already find the dataset (in --dir, or where training looks)")
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


def _score(net, blocks, labels_source: str, model: str) -> tuple[float, float, float, int]:
    """(accuracy, mean loss, mean confidence, images) over (images, labels) blocks, summed as ``evaluate`` sums its chunks.

    A label beyond the model's outputs (it knows as many classes as its training data had) is refused.
    """
    classes = net.sizes[-1]
    correct, loss, confidence, seen = 0, 0.0, 0.0, 0
    for images, labels in blocks:
        if len(labels) and int(labels.max()) >= classes:
            raise UserError(f"{labels_source}: holds label {int(labels.max())}, but the model {model} knows only {classes} classes (0..{classes - 1})")
        right, summed, sure = score(net, images, labels.astype(np.intp))
        correct, loss, confidence, seen = correct + right, loss + summed, confidence + sure, seen + len(labels)
    return correct / seen, loss / seen, confidence / seen, seen


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
        images, labels, md5 = open_images(args.images, args.test_size, idx_only=True), args.labels, {}
        source = args.images
    else:
        name = args.dataset or meta.get("dataset", "mnist")
        spec = datasets.get_spec(name)
        directory = datasets.locate(name, args.data_dir)
        image_header, label_header = datasets.split_headers(spec, directory, "test")
        images = open_images(str(image_header.path), args.test_size, idx_only=True)
        labels = str(label_header.path)
        md5 = {str(h.path): spec.md5.get(h.path.name.removesuffix(".gz")) for h in (image_header, label_header)}
        source = f"{name} test set in {directory}"
    images.check_for(net.sizes[0])
    blocks = labelled_blocks(images, labels, args.test_size, md5)
    accuracy, loss, confidence, seen = _score(net, blocks, f"{args.labels or source}", args.model)
    if args.json:
        _print_results(
            json.dumps({"test_accuracy": accuracy, "test_loss": loss, "test_confidence": confidence, "samples": seen, "source": source}) + "\n", "the score"
        )
    else:
        _print_results(f"test accuracy {accuracy:.2%}, confidence {confidence:.2%} (loss {loss:.4f}) on {seen} images of the {source}\n", "the score")
    return 0


def _check_output(out: str, inputs: dict[str, str]) -> None:
    """Refuse an output path that would replace one of the command's inputs, or is a folder,
    before anything is read: writing the predictions must never cost the model."""
    target = Path(out)
    if target.is_dir():
        raise UserError(f"--out {out}: is a directory; name a file to write the predictions to")
    for flag, given in inputs.items():
        source = Path(given)
        try:
            same = target.exists() and source.exists() and os.path.samefile(target, source)
        except OSError:
            same = False
        if same or target.resolve() == source.resolve():
            raise UserError(f"--out {out}: is the file given to {flag}; name another file for the predictions")


def _print_results(text: str, what: str = "the predictions") -> None:
    """Write a command's results to stdout, all of them or an error: unlike progress lines
    (``console.write_out``, best effort), they are the command's product, so a full disk
    (``> /dev/full``) or a failing device must not end in a silent exit 0. A reader that left
    on purpose (``| head``: EPIPE) is no error, as for any Unix filter."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        try:  # the interpreter's last flush would trip over the same stream: point it at /dev/null
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
        except OSError:
            pass
        if isinstance(exc, BrokenPipeError):
            return
        why = os_reason(exc) if isinstance(exc, OSError) else "it was closed"
        raise UserError(f"cannot write {what} to stdout ({why})" + ("; use --out FILE to save them" if what == "the predictions" else "")) from None


def cmd_predict(argv: list[str]) -> int:
    p = Parser(prog="python -m pnn_mpi predict", description="Predict the class of every image in an IDX file or a .npy array with a saved model.")
    p.add_argument("--model", required=True, metavar="FILE", help="a model.npz saved by training")
    p.add_argument(
        "--images",
        required=True,
        metavar="FILE",
        help="IDX images (raw or .gz), or a .npy array of shape (n, rows, cols) or (n, pixels): uint8 pixels, or floats already in [0, 1]",
    )
    p.add_argument("--out", metavar="FILE", help="write the predictions to FILE (.npy, or text with one label per line); default: print them")
    p.add_argument(
        "--proba",
        action="store_true",
        help="give every class's probability instead of the predicted class: one line of space-separated "
        "probabilities per image (class 0 first), or an (images, classes) float64 array in a .npy --out",
    )
    args = p.parse_args(argv)
    if args.out is not None:
        _check_output(args.out, {"--model": args.model, "--images": args.images})
    net, _ = load_model(Path(args.model))
    images = open_images(args.images)
    images.check_for(net.sizes[0])
    check_model(args.model, net.sizes, net.dtype.itemsize, images=images.count)
    found = np.empty((images.count, net.sizes[-1]), dtype=np.float64) if args.proba else np.empty(images.count, dtype=np.intp)
    at = 0
    for block in images.blocks():
        found[at : at + len(block)] = probabilities(net, block) if args.proba else predict(net, block)
        at += len(block)
    text = "".join((" ".join(f"{p:.6f}" for p in row) if found.ndim == 2 else str(row)) + "\n" for row in found.tolist())
    if args.out is None:
        _print_results(text)
        return 0
    try:
        if args.out.endswith(".npy"):
            buffer = io.BytesIO()
            np.save(buffer, found)
            write_atomically(args.out, buffer.getvalue())
        else:
            write_atomically(args.out, text.encode())
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write there ({os_reason(exc)})") from None
    return 0


def cmd_resume_ranks(argv: list[str]) -> int:
    p = Parser(
        prog="python -m pnn_mpi resume-ranks",
        description="Print how many ranks the checkpoint in a run folder resumes with (nothing when it holds none): "
        "after a lost rank, the survivors' count, which a requeued job must launch.",
    )
    p.add_argument("out", metavar="DIR", help="the run folder (--out) holding checkpoint.npz")
    args = p.parse_args(argv)
    ranks = checkpoint.resume_ranks(Path(args.out) / checkpoint.FILE)
    if ranks is not None:
        print(ranks)
    return 0
