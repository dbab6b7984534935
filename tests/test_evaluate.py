"""Scoring against a straightforward computation: accuracy, summed loss, predictions, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from pnn_mpi.nn import evaluate as ev
from pnn_mpi.nn.losses import OUTPUTS
from pnn_mpi.nn.network import Network


def plain_outputs(net: Network, x: np.ndarray) -> np.ndarray:
    return net.forward(x, net.workspace(len(x))).copy()


@pytest.mark.parametrize("output", sorted(OUTPUTS))
@pytest.mark.parametrize("n", [1, 999, 2500])  # one chunk, one short chunk, two full chunks and a remainder
def test_score_and_predict_match_one_big_forward(output, n):
    """score counts argmax hits and sums the loss as one forward over all images would;
    predict gives the argmax of every row; uint8 images are scaled by 1/255."""
    net = Network((12, 9, 10), "tanh", output, "float64")
    net.initialize("xavier-normal", 0.1, 3)
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 12)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.intp)
    outputs = plain_outputs(net, images / 255.0)
    expected_correct = int(np.sum(outputs.argmax(axis=1) == labels))
    correct, loss, _ = ev.score(net, images, labels)
    assert correct == expected_correct
    assert loss == pytest.approx(net.output.loss_sum(outputs, labels), rel=1e-10)
    np.testing.assert_array_equal(ev.predict(net, images), outputs.argmax(axis=1))
    accuracy, mean_loss, _ = ev.evaluate(net, images, labels)
    assert accuracy == expected_correct / n and mean_loss == pytest.approx(loss / n, rel=1e-12)


def test_float_images_and_empty_sets():
    """Float images are taken as already scaled; an empty set scores nan and predicts nothing."""
    net = Network((4, 10), "relu", "softmax-xent", "float32")
    net.initialize("he", 0.0, 1)
    images = np.random.default_rng(0).random((5, 4))
    np.testing.assert_array_equal(ev.predict(net, images), plain_outputs(net, images.astype(np.float32)).argmax(axis=1))
    assert all(np.isnan(v) for v in ev.evaluate(net, images[:0], np.zeros(0, np.intp)))
    assert ev.predict(net, images[:0]).shape == (0,)


def test_labels_of_another_integer_type():
    """uint8 labels (as read from IDX files) score like intp labels."""
    net = Network((6, 10), "relu", "softmax-xent", "float64")
    net.initialize("he", 0.0, 2)
    rng = np.random.default_rng(1)
    images, labels = rng.random((50, 6)), rng.integers(0, 10, 50)
    assert ev.score(net, images, labels.astype(np.uint8)) == ev.score(net, images, labels.astype(np.intp))


def _independent_probabilities(net: Network, x: np.ndarray, output: str) -> np.ndarray:
    """The output rows by a forward pass written out here (tanh hidden layer), not the network's."""
    h = np.tanh(x @ net.weights[0].astype(np.float64) + net.biases[0])
    z = h @ net.weights[1].astype(np.float64) + net.biases[1]
    if output == "softmax-xent":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-z))  # sigmoid outputs, not a distribution


@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_confidence_is_the_mean_share_of_the_predicted_class(output):
    """confidence = mean over images of max(output) / sum(output): for softmax, the mean
    probability of the predicted class; for sigmoid outputs, the same after reading the
    outputs as a distribution. Checked against an independent forward pass, across chunks."""
    net = Network((7, 5, 10), "tanh", output, "float64")
    net.initialize("xavier-normal", 0.2, 11)
    rng = np.random.default_rng(4)
    n = ev.CHUNK + 37
    images, labels = rng.random((n, 7)), rng.integers(0, 10, n).astype(np.intp)
    p = _independent_probabilities(net, images, output)
    expected = float(np.mean(p.max(axis=1) / p.sum(axis=1)))
    _, _, confidence_sum = ev.score(net, images, labels)
    assert confidence_sum / n == pytest.approx(expected, rel=1e-10)
    accuracy, _, confidence = ev.evaluate(net, images, labels)
    assert confidence == pytest.approx(expected, rel=1e-10)
    assert 0.1 <= confidence <= 1.0
    if output == "softmax-xent":  # the mean probability of the predicted class, in plain words
        assert confidence == pytest.approx(float(np.mean(p[np.arange(n), p.argmax(axis=1)])), rel=1e-10)
