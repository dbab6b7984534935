"""PNNClassifier: scikit-learn's own estimator checks, and the same model as the command line.

scikit-learn is a test dependency only (the ``test`` extra); the estimator
never imports it. The command-line comparisons train on the same samples with
the same options and compare the saved model files byte for byte.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from conftest import REPO, clean_env, mpiexec_path, run_pnn, write_dataset
from pnn_mpi import PNNClassifier
from pnn_mpi.data import datasets
from pnn_mpi.estimator import NearChanceWarning
from pnn_mpi.training.model_io import load_model

try:  # the label, warning and output tests need no scikit-learn; its own checks do
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.estimator_checks import parametrize_with_checks
except ImportError:
    parametrize_with_checks = None
needs_sklearn = pytest.mark.skipif(parametrize_with_checks is None, reason="scikit-learn (the test extra) is not installed")


def _expected(estimator):
    """No check is marked: every one applies (the float32 network's outputs no longer depend on the
    batch a row is scored in, so check_methods_subset_invariance passes at its 1e-7 tolerance too)."""
    return {}


if parametrize_with_checks is not None:
    with warnings.catch_warnings():  # "does not inherit from BaseEstimator": by design, no runtime scikit-learn
        warnings.filterwarnings("ignore", "Estimator PNNClassifier does not inherit")
        _all_checks = parametrize_with_checks([PNNClassifier(), PNNClassifier(dtype="float64")], expected_failed_checks=_expected)

    @pytest.mark.filterwarnings("ignore:Estimator PNNClassifier does not inherit")
    @_all_checks
    def test_scikit_learn_estimator_checks(estimator, check):
        check(estimator)


def test_the_estimator_imports_no_scikit_learn():
    code = (
        "import sys, numpy as np; from pnn_mpi import PNNClassifier; "
        "PNNClassifier(hidden=4, epochs=1).fit(np.eye(4), [0, 1, 0, 1]); print('sklearn' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stdout.strip() == "False", proc.stderr


@needs_sklearn
def test_parameters_are_the_training_options_and_bad_ones_fail_in_fit():
    clf = PNNClassifier(hidden=(16, 8), sync="end", lr=0.1)
    assert clone(clf).get_params() == clf.get_params()
    assert clf.set_params(epochs=3) is clf and clf.epochs == 3
    with pytest.raises(ValueError, match="invalid parameter: sync='sometimes'"):
        PNNClassifier(sync="sometimes").fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="Invalid parameter 'bogus'"):
        clf.set_params(bogus=1)
    assert repr(clf) == "PNNClassifier(hidden=(16, 8), lr=0.1, epochs=3, sync='end')"


@needs_sklearn
def test_any_labels_and_a_pipeline():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(-2, 1, (60, 5)), rng.normal(2, 1, (60, 5))])
    y = np.array(["cat"] * 60 + ["dog"] * 60)
    model = make_pipeline(StandardScaler(), PNNClassifier(hidden=(8,), epochs=5)).fit(x, y)
    assert list(model.classes_) == ["cat", "dog"]
    assert model.score(x, y) > 0.95
    proba = model.predict_proba(x)
    assert proba.shape == (120, 2) and np.allclose(proba.sum(axis=1), 1)


FIT_MNIST = """
    # In a child with one BLAS thread, as python -m pnn_mpi runs: threaded BLAS sums in another order.
    import pickle, sys
    from pathlib import Path
    from pnn_mpi import PNNClassifier
    from pnn_mpi.data import datasets

    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    images, y = datasets.load_split(datasets.get_spec("mnist"), folder, "train", 0, 3000, verify=False, check_end=False)
    clf = PNNClassifier(hidden=(32,), epochs=2, sync="end", seed=4).fit(images.reshape(3000, -1), y)
    clf.save(out / "est.npz", dataset="mnist", image_shape="28x28", ranks="1")
    (out / "est.pkl").write_bytes(pickle.dumps(clf))
"""


def test_fit_gives_the_command_lines_model_file(mnist_dir, tmp_path):
    """The same 3,000 MNIST samples and options: the estimator's file is the CLI's, byte for byte."""
    out = tmp_path / "cli"
    env = clean_env(PNN_MPI_DATA=str(mnist_dir))
    flags = ["--train-size", "3000", "--test-size", "500", "--epochs", "2", "--hidden", "32", "--sync", "end", "--seed", "4"]
    proc = run_pnn(*flags, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    fit = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FIT_MNIST), str(mnist_dir), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert fit.returncode == 0, fit.stderr
    assert (tmp_path / "est.npz").read_bytes() == (out / "model.npz").read_bytes()
    clf = pickle.loads((tmp_path / "est.pkl").read_bytes())
    losses = [e["train_loss"] for e in json.loads((out / "metrics.json").read_text())["epochs"]]
    assert clf.loss_curve_ == losses
    images, _ = datasets.load_split(datasets.get_spec("mnist"), mnist_dir, "train", 0, 50, verify=False, check_end=False)
    x = images.reshape(50, -1)

    # ... and what the CLI predicts with that file, the estimator predicts; --proba agrees too.
    sample = tmp_path / "digits.npy"
    np.save(sample, x[:50].reshape(50, 28, 28))
    labels = run_pnn("predict", "--model", str(out / "model.npz"), "--images", str(sample))
    proba = run_pnn("predict", "--model", str(out / "model.npz"), "--images", str(sample), "--proba")
    assert labels.returncode == 0 and proba.returncode == 0, labels.stderr + proba.stderr
    assert [int(v) for v in labels.stdout.split()] == list(clf.predict(x[:50]))
    table = np.array([[float(v) for v in line.split()] for line in proba.stdout.splitlines()])
    assert table.shape == (50, 10)
    np.testing.assert_allclose(table, clf.predict_proba(x[:50]), atol=1e-6)
    assert (table.argmax(axis=1) == clf.predict(x[:50])).all()


SCRIPT = """
    # A user's mpi4py program: every rank passes its own slice, fit forms the parallel network.
    import sys
    import numpy as np
    from mpi4py import MPI
    from pnn_mpi import PNNClassifier
    from pnn_mpi.data.idx import read_records
    from pnn_mpi.data.slicing import slice_bounds

    folder, out = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    lo, hi = slice_bounds(600, comm.size, comm.rank)
    x = read_records(folder + "/train-images-idx3-ubyte", lo, hi, expect="images").reshape(hi - lo, -1)
    y = read_records(folder + "/train-labels-idx1-ubyte", lo, hi, expect="labels")
    clf = PNNClassifier(hidden=(16,), epochs=3, sync="epoch", seed=2).fit(x, y)
    params = comm.allgather(clf.network_.params.tobytes())
    assert len(set(params)) == 1 and clf.n_ranks_ == comm.size
    if comm.rank == 0:
        clf.save(out, dataset="custom", image_shape="6x6", ranks=str(comm.size))
"""


def test_fit_under_mpiexec_is_the_parallel_network_of_the_command_line(tmp_path):
    """Two ranks, each fitting its own slice in a user's script: the CLI's 2-rank model file."""
    data = write_dataset(tmp_path / "tiny", train=600, test=100, seed=5)
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = clean_env()
    proc = subprocess.run(
        [mpiexec_path(), "-n", "2", sys.executable, str(script), str(data), str(tmp_path / "est.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cli = run_pnn(
        "--dataset",
        "custom",
        "--data-dir",
        str(data),
        "--hidden",
        "16",
        "--epochs",
        "3",
        "--seed",
        "2",
        "--sync",
        "epoch",
        "--out",
        str(tmp_path / "cli"),
        ranks=2,
    )
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "est.npz").read_bytes() == (tmp_path / "cli" / "model.npz").read_bytes()
    net, meta = load_model(tmp_path / "est.npz")
    assert meta["ranks"] == "2" and net.sizes == (36, 16, 10)


@pytest.mark.mpi(min_size=2)
@pytest.mark.filterwarnings("ignore::pnn_mpi.estimator.NearChanceWarning")  # a few epochs on noise
def test_classes_are_those_of_all_ranks_and_bad_input_fails_every_rank():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)
    x = rng.normal(size=(20, 3))
    y = np.full(20, comm.rank % 3)  # each rank holds one class only; together they hold several
    clf = PNNClassifier(hidden=(4,), epochs=1).fit(x, y)
    assert list(clf.classes_) == sorted({r % 3 for r in range(comm.size)})
    assert len(set(comm.allgather(clf.network_.params.tobytes()))) == 1
    bad = x.copy()
    if comm.rank == comm.size - 1:
        bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(bad, y)


# --- labels: the model depends on the classes' order, never on their names ----------------------


def _two_blobs(n: int = 120, features: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = np.arange(n) % 2
    x = rng.normal(size=(n, features)) + 1.5 * codes[:, None]
    return x, codes


RENAMINGS = {  # codes 0/1 -> labels; the classes sort in the codes' order, so the weights are those of 0/1
    "strings": np.array(["cat", "dog"]),
    "objects": np.array(["cat", "dog"], dtype=object),
    "non-contiguous ints": np.array([10, 20]),
    "negative ints": np.array([-7, -3]),
    "floats": np.array([1.0, 2.0]),
    "bools": np.array([False, True]),
    "unsigned bytes": np.array([3, 7], dtype=np.uint8),
}


@pytest.mark.parametrize("name", RENAMINGS)
def test_renamed_labels_train_bit_identical_weights(name):
    x, codes = _two_blobs()
    names = RENAMINGS[name]
    plain = PNNClassifier(hidden=(6,), epochs=3).fit(x, codes)
    renamed = PNNClassifier(hidden=(6,), epochs=3).fit(x, names[codes])
    assert renamed.network_.params.tobytes() == plain.network_.params.tobytes()
    assert list(renamed.classes_) == list(names) and renamed.classes_.dtype == names.dtype
    predicted = renamed.predict(x)
    assert predicted.dtype == names.dtype
    assert (predicted == names[plain.predict(x)]).all()
    assert renamed.score(x, names[codes]) == plain.score(x, codes)


@pytest.mark.parametrize("order", [[2, 0, 1], [1, 2, 0], [2, 1, 0]])
def test_names_that_sort_in_another_order_train_on_their_sorted_codes(order):
    """Code c is named NAMES[order[c]]: classes_ is the sorted names, and the network is the one
    trained on the integers order[c] (each name's index in classes_), bit for bit."""
    rng = np.random.default_rng(1)
    codes = np.arange(150) % 3
    x = rng.normal(size=(150, 4)) + 2.0 * np.eye(3, 4)[codes]
    names = np.array(["ant", "bee", "cow"])
    labels = names[np.array(order)[codes]]
    renamed = PNNClassifier(hidden=(6,), epochs=3).fit(x, labels)
    recoded = PNNClassifier(hidden=(6,), epochs=3).fit(x, np.array(order)[codes])
    assert list(renamed.classes_) == ["ant", "bee", "cow"]
    assert renamed.network_.params.tobytes() == recoded.network_.params.tobytes()
    assert (renamed.predict(x) == names[recoded.predict(x)]).all()


def test_labels_of_several_kinds_in_one_y_are_refused():
    x, codes = _two_blobs()
    mixed = np.array(["cat", 1] * 60, dtype=object)
    with pytest.raises(ValueError, match="mixed label types"):
        PNNClassifier(hidden=(4,), epochs=1).fit(x, mixed)


@pytest.mark.mpi(min_size=2)
@pytest.mark.filterwarnings("ignore::pnn_mpi.estimator.NearChanceWarning")  # a few epochs on noise
def test_a_rank_without_some_class_agrees_on_classes_and_on_the_model():
    """Each rank passes its own share; rank 0's holds no "dog": every rank still has
    classes_ ['cat', 'dog', 'emu'] and the network trained on the codes 0/1/2."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)
    codes = np.array([0, 2] * 15) if comm.rank == 0 else np.arange(30) % 3
    x = rng.normal(size=(30, 4)) + np.eye(3, 4)[codes]
    names = np.array(["cat", "dog", "emu"])
    renamed = PNNClassifier(hidden=(4,), epochs=2).fit(x, names[codes])
    plain = PNNClassifier(hidden=(4,), epochs=2).fit(x, codes)
    assert comm.allgather(list(renamed.classes_)) == [["cat", "dog", "emu"]] * comm.size
    assert renamed.network_.params.tobytes() == plain.network_.params.tobytes()
    assert len(set(comm.allgather(renamed.network_.params.tobytes()))) == 1


# --- training that learns nothing says so; verbose prints only what it computed -----------------


@pytest.mark.parametrize("scale, cause", [(16.0, "unscaled inputs are the likely cause"), (1.0, "the learning rate")])
def test_training_near_chance_warns_naming_the_likely_cause(scale, cause):
    rng = np.random.default_rng(2)
    codes = np.arange(400) % 4
    x = (rng.random((400, 16)) * 0.5 + 0.5 * np.eye(4, 16)[codes]) * scale
    with pytest.warns(NearChanceWarning, match=f"training stayed near chance.*{cause}"):
        PNNClassifier(hidden=(16,), epochs=2, lr=5.0, momentum=0.0).fit(x, codes)


def test_training_that_learns_gives_no_warning_and_the_warning_can_be_filtered():
    x, codes = _two_blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PNNClassifier(hidden=(6,), epochs=3).fit(x, codes)  # learns: nothing said
        warnings.filterwarnings("ignore", category=NearChanceWarning)
        PNNClassifier(hidden=(6,), epochs=1, lr=50.0, momentum=0.0).fit(x * 16, codes)  # would warn


def test_verbose_prints_no_figure_it_did_not_compute(capsys):
    x, codes = _two_blobs()
    PNNClassifier(hidden=(6,), epochs=3, verbose=True).fit(x, codes)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"epoch {e}/3") for e, line in enumerate(lines, 1)), lines
    assert not [line for line in lines if "nan" in line or "test" in line], lines
