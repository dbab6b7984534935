"""Scoring a network on labelled images, in fixed-size chunks.

Training, the ``evaluate`` command and ``predict`` all go through these
functions, so the accuracy a run reports is the accuracy its saved model gives.
A score also gives the network's *confidence*: the mean over the images of
the share of the output that goes to the predicted class, ``max(out) / sum(out)``.
For a softmax output the outputs sum to 1, so it is the mean probability of the
predicted class; sigmoid outputs (``sigmoid-mse``) do not sum to 1, and dividing
by their sum reads them as a distribution the same way. It is at most 1, at
least 1/classes, and sits near the accuracy for a well-calibrated network.
Images stay uint8 until a chunk is scaled, which keeps a rank's test set small,
and every chunk reuses one workspace, so scoring allocates only that workspace.
"""

from __future__ import annotations

import numpy as np

from .network import Network

CHUNK = 1000


def to_inputs(images: np.ndarray, dtype, out: np.ndarray | None = None) -> np.ndarray:
    """Network inputs in [0, 1]: pixel bytes 0..255 are scaled, floating-point
    images are taken as already scaled."""
    if out is None:
        out = np.empty(images.shape, dtype=dtype)
    if images.dtype == np.uint8:
        np.multiply(images, 1.0 / 255.0, out=out, casting="unsafe")
    else:
        out[...] = images
    return out


def _outputs_by_chunk(net: Network, images: np.ndarray):
    ws = net.workspace(min(CHUNK, max(len(images), 1)))
    for start in range(0, len(images), ws.capacity):
        chunk = images[start : start + ws.capacity]
        x = to_inputs(chunk, net.dtype, out=ws.inputs[: len(chunk)])
        yield start, net.forward(x, ws), ws


def confidence_sum(out: np.ndarray) -> float:
    """The summed confidence of these output rows: each row's largest output over the row's sum."""
    return float(np.sum(out.max(axis=1) / np.maximum(out.sum(axis=1), np.finfo(out.dtype).tiny)))


def score(net: Network, images: np.ndarray, labels: np.ndarray) -> tuple[int, float, float]:
    """(number classified correctly, summed loss, summed confidence): sums, so ranks can add theirs up."""
    correct, loss, confidence = 0, 0.0, 0.0
    for start, out, ws in _outputs_by_chunk(net, images):
        truth = labels[start : start + len(out)]
        confidence += confidence_sum(out)
        wrong = np.argmax(out, axis=1, out=ws.rows.index[: len(out)])
        np.subtract(wrong, truth, out=wrong, casting="unsafe")  # 0 where the prediction is right
        correct += len(out) - int(np.count_nonzero(wrong))
        loss += net.output.loss_sum(out, truth, ws.rows)
    return correct, loss, confidence


def evaluate(net: Network, images: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(accuracy as a fraction, mean loss, mean confidence) of ``net`` on ``images``."""
    if len(labels) == 0:
        return float("nan"), float("nan"), float("nan")
    correct, loss, confidence = score(net, images, labels)
    return correct / len(labels), loss / len(labels), confidence / len(labels)


def predict(net: Network, images: np.ndarray) -> np.ndarray:
    """The predicted class of every image (uint8 pixels, or floats in [0, 1])."""
    found = np.empty(len(images), dtype=np.intp)
    for start, out, _ in _outputs_by_chunk(net, images):
        np.argmax(out, axis=1, out=found[start : start + len(out)])
    return found


def probabilities(net: Network, images: np.ndarray) -> np.ndarray:
    """Every image's class probabilities, (n, classes) float64 rows summing to 1: the
    softmax outputs, or the sigmoid outputs normalised (``sigmoid-mse``)."""
    found = np.empty((len(images), net.sizes[-1]), dtype=np.float64)
    for start, out, _ in _outputs_by_chunk(net, images):
        found[start : start + len(out)] = out
    totals = found.sum(axis=1, keepdims=True)
    np.divide(found, totals, out=found, where=totals > 0)
    found[totals[:, 0] <= 0] = 1.0 / net.sizes[-1]
    return found
