"""evaluate and predict: their results reach stdout whole, or the command fails in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, clean_env, write_dataset
from pnn_mpi.nn.network import Network
from pnn_mpi.training.model_io import save_model

PREFIX = "pnn_mpi: error: "


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    net = Network((36, 4, 10), "relu", "softmax-xent", "float32")
    net.params[...] = np.random.default_rng(0).normal(size=net.params.shape)
    save_model(folder / "model.npz", net, {"dataset": "custom", "image_shape": "6x6", "ranks": "1"})
    np.save(folder / "images.npy", np.random.default_rng(1).integers(0, 256, size=(3000, 6, 6), dtype=np.uint8))
    data = write_dataset(folder / "data", train=60, test=3000, seed=2)
    return folder / "model.npz", folder / "images.npy", data


def _command(kind: str, model, images, data) -> list[str]:
    if kind == "evaluate":
        return ["evaluate", "--model", str(model), "--images", str(data / "t10k-images-idx3-ubyte"), "--labels", str(data / "t10k-labels-idx1-ubyte")]
    return ["predict", "--model", str(model), "--images", str(images), *(["--proba"] if kind == "predict --proba" else [])]


def _run(argv: list[str], stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pnn_mpi", *argv], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, env=clean_env(), cwd=REPO)


KINDS = ["predict", "predict --proba", "evaluate"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_disk_under_stdout_fails_in_one_line(model_and_images, kind):
    with open("/dev/full", "w") as full:
        proc = _run(_command(kind, *model_and_images), full)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(PREFIX), proc.stderr
    assert "to stdout (No space left on device)" in lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_reader_that_left_on_purpose_is_no_error(model_and_images, kind):
    """``| head`` (EPIPE) ends a filter quietly; test_interrupts checks predict's whole pipeline."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        proc = _run(_command(kind, *model_and_images), write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_results_reach_a_writable_stdout(model_and_images, kind):
    proc = _run(_command(kind, *model_and_images), subprocess.PIPE)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(proc.stdout.splitlines()) == (1 if kind == "evaluate" else 3000)
