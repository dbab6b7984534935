"""``PNNClassifier``: the parallel network as a scikit-learn-style estimator.

For notebooks and pipelines: ``PNNClassifier(hidden=(128,), sync="epoch").fit(X, y)``,
then ``predict``, ``predict_proba``, ``score``, ``get_params``/``set_params``.
It follows scikit-learn's conventions without importing scikit-learn (a test
dependency only): parameters are stored as given and checked in ``fit``,
fitted attributes end in ``_``, and bad input raises the ValueError or
TypeError scikit-learn's checks expect.

Inside an mpi4py program started by mpiexec (as Horovod wraps a user's
script), every rank passes *its own slice* to ``fit`` and the ranks form the
parallel network over ``COMM_WORLD`` (or the communicator given as ``comm``);
every rank ends with the same averaged network. Outside MPI it is the 1-rank
network, and no MPI library is needed. Training is the project's own loop
(``train.train``): the arrays take the place of the IDX slices it normally
loads, so the same data and options give the same model file as the command line.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np

from .common.errors import UserError
from .nn.evaluate import predict as predict_classes
from .nn.evaluate import probabilities, to_inputs
from .nn.network import Network
from .parallel.comm import current_world
from .training.config import TrainConfig
from .training.model_io import save_model
from .training.rank_data import RankData
from .training.train import Hooks, train


class DataConversionWarning(UserWarning):
    """Input had to be reshaped or converted (scikit-learn's warning of this name, reproduced)."""


class NearChanceWarning(UserWarning):
    """Training ended barely better than always guessing the most common class
    (``warnings.filterwarnings("ignore", category=NearChanceWarning)`` silences it)."""


class NotFittedError(ValueError, AttributeError):
    """``predict`` before ``fit`` (scikit-learn's exception of this name, reproduced)."""


def _sklearn_flavoured(ours: type, module: str, name: str) -> type:
    """``ours``, also an instance of scikit-learn's class of the same name when the user's
    program has loaded scikit-learn already, so its ``except``/``filterwarnings`` work; never
    imports scikit-learn."""
    theirs = getattr(sys.modules.get(module), name, None)
    if theirs is None or issubclass(ours, theirs):
        return ours
    return _BLENDS.setdefault((ours, theirs), type(name, (ours, theirs), {"__module__": __name__}))


_BLENDS: dict = {}


def _not_fitted(who: str) -> Exception:
    kind = _sklearn_flavoured(NotFittedError, "sklearn.exceptions", "NotFittedError")
    return kind(f"This {who} instance is not fitted yet: call fit first")


def _is_sparse(x) -> bool:
    return type(x).__module__.startswith("scipy.sparse") or (hasattr(x, "tocsr") and hasattr(x, "nnz"))


def _check_x(x, who: str) -> np.ndarray:
    """X as a 2-D finite numeric array (uint8 kept: pixel bytes, scaled like the command line)."""
    if _is_sparse(x):
        raise TypeError(f"{who} does not accept sparse input: pass a dense array (X.toarray())")
    if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        array = np.asarray(x)
    else:
        raise TypeError(f"{who} expects an array-like X, got {type(x).__name__}")
    if array.dtype.kind == "c":
        raise ValueError("Complex data not supported")
    if array.dtype.kind in "OUS":
        try:
            array = array.astype(np.float64)
        except TypeError as exc:
            raise TypeError(f"{who}: X must be numeric: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{who}: X must be numeric: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{who}: X must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"Expected 2D array, got {array.ndim}D array instead (shape {array.shape}). Reshape your data "
            f"with array.reshape(-1, 1) for a single feature or array.reshape(1, -1) for a single sample"
        )
    if array.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={array.shape}) while a minimum of 1 is required.")
    if array.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={array.shape}) while a minimum of 1 is required.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        kind = "NaN" if np.isnan(array).any() else "infinity"
        raise ValueError(f"Input X contains {kind}: {who} needs finite values")
    return array


def _check_y(y, n: int, who: str) -> np.ndarray:
    if y is None:
        raise ValueError(f"{who} requires y to be passed, but the target y is None")
    if _is_sparse(y):
        raise TypeError(f"{who} does not accept a sparse y")
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change the shape of y to (n_samples,), for example using ravel().",
            _sklearn_flavoured(DataConversionWarning, "sklearn.exceptions", "DataConversionWarning"),
            stacklevel=3,
        )
        labels = labels.ravel()
    if labels.ndim != 1:
        raise ValueError(f"{who} takes one label per sample (y of shape (n_samples,)), got y of shape {labels.shape}")
    if len(labels) != n:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: X has {n}, y has {len(labels)}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise ValueError("Unknown label type: continuous (y holds non-integer numbers); a classifier needs class labels")
    elif labels.dtype.kind not in "biuUSO":
        raise ValueError(f"Unknown label type: {labels.dtype}")
    if labels.dtype.kind == "O":
        kinds = {type(v) for v in labels.tolist()}
        if len(kinds) > 1:
            raise ValueError(f"Unknown label type: mixed label types {sorted(k.__name__ for k in kinds)}")
    return labels


class PNNClassifier:
    """A parallel neural network classifier (an MLP trained by local SGD on every rank, averaged).

    The parameters are the training options of ``python -m pnn_mpi`` (see its
    ``--help``); ``verbose`` prints the epoch lines on rank 0; ``comm`` is the
    mpi4py communicator to train over (default: COMM_WORLD under a launcher,
    else one process). Inputs: a 2-D numeric array; uint8 arrays are taken as
    pixel bytes and scaled by 1/255, as the command line does with IDX files;
    any other numbers are used as they are. Labels: any class labels.
    """

    def __init__(
        self,
        hidden=(128,),
        activation="relu",
        output="softmax-xent",
        init="he",
        bias_init=0.0,
        batch_size=32,
        lr=None,
        momentum=0.9,
        lr_decay=1.0,
        lr_schedule=None,
        warmup=None,
        epochs=10,
        sync=None,
        seed=1,
        dtype="float32",
        shuffle=True,
        kernel="auto",
        verbose=False,
        comm=None,
    ):
        self.hidden = hidden
        self.activation = activation
        self.output = output
        self.init = init
        self.bias_init = bias_init
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.lr_decay = lr_decay
        self.lr_schedule = lr_schedule
        self.warmup = warmup
        self.epochs = epochs
        self.sync = sync
        self.seed = seed
        self.dtype = dtype
        self.shuffle = shuffle
        self.kernel = kernel
        self.verbose = verbose
        self.comm = comm

    _PARAMS = (
        "hidden",
        "activation",
        "output",
        "init",
        "bias_init",
        "batch_size",
        "lr",
        "momentum",
        "lr_decay",
        "lr_schedule",
        "warmup",
        "epochs",
        "sync",
        "seed",
        "dtype",
        "shuffle",
        "kernel",
        "verbose",
        "comm",
    )

    # ---------------------------------------------------------------- parameters

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params) -> PNNClassifier:
        for name, value in params.items():
            if name not in self._PARAMS:
                raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}: valid ones are {', '.join(self._PARAMS)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if not _same(v, defaults[k]))
        return f"{type(self).__name__}({changed})"

    def __sklearn_tags__(self):
        """Tags for scikit-learn's machinery (imported only when scikit-learn asks)."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags(multi_class=True, multi_label=False),
            input_tags=InputTags(two_d_array=True, sparse=False, allow_nan=False),
            non_deterministic=False,
        )

    def config(self) -> TrainConfig:
        """The training configuration these parameters make (a ValueError names a bad one)."""
        hidden = (self.hidden,) if isinstance(self.hidden, (int, np.integer)) else tuple(self.hidden or ())
        try:
            return TrainConfig(
                hidden=hidden,
                activation=self.activation,
                output=self.output,
                init=self.init,
                bias_init=float(self.bias_init),
                batch_size=self.batch_size,
                lr=None if self.lr is None else float(self.lr),
                momentum=float(self.momentum),
                lr_decay=float(self.lr_decay),
                lr_schedule=self.lr_schedule,
                warmup=None if self.warmup is None else int(self.warmup),
                epochs=int(self.epochs),
                sync=self.sync,
                seed=int(self.seed),
                dtype=self.dtype,
                shuffle=bool(self.shuffle),
                kernel=self.kernel,
                eval_every=0,
                dataset="custom",
            )
        except (UserError, TypeError) as exc:
            said = re.sub(r"^--([a-z-]+) ", lambda m: m.group(1).replace("-", "_") + "=", str(exc))  # name the parameter, not the flag
            raise ValueError(f"{type(self).__name__}: invalid parameter: {said}") from None

    # ---------------------------------------------------------------- fitting

    def fit(self, X, y) -> PNNClassifier:
        """Train on (X, y): this rank's slice when several ranks train together."""
        who = type(self).__name__
        cfg = self.config()
        world = current_world(self.comm, start_mpi_alone=False)  # alone in a notebook: no MPI to start
        cfg = cfg.resolved(world.size)  # the defaults rule, as the command line applies it: it needs the ranks

        def check():
            x = _check_x(X, who)
            return x, _check_y(y, len(x), who)

        (x, labels) = _agreed(world, check)
        widths = world.allgather(x.shape[1])
        if len(set(widths)) > 1:
            raise ValueError(f"the ranks passed X with different numbers of features: {widths}")
        classes = np.unique(np.concatenate(world.allgather(np.unique(labels))))
        if len(classes) < 2:
            raise ValueError(f"y holds one class only ({classes[0]!r}): {who} needs samples of at least 2 classes to train")
        sizes = world.allgather(len(x))
        data = RankData(
            directory=Path("<arrays given to fit>"),
            train_total=sum(sizes),
            slice_sizes=sizes,
            start=sum(sizes[: world.rank]),
            x=to_inputs(x, cfg.dtype),
            y=np.searchsorted(classes, labels).astype(np.intp),
            test_images=np.empty((0, x.shape[1]), dtype=cfg.dtype),
            test_labels=np.empty(0, dtype=np.intp),
            test_total=0,
            image_shape=(x.shape[1],),
            load_seconds=0.0,
            classes=len(classes),
        )
        log = print if self.verbose and world.rank == 0 else (lambda line: None)
        with np.errstate(all="ignore"):
            result = train(cfg, world, data, log=log, hooks=Hooks())
        _warn_if_near_chance(world, result.net, data.x, data.y, classes, x)
        self.network_ = result.net
        self.classes_ = classes
        self.n_features_in_ = int(x.shape[1])
        self.n_iter_ = len(result.epochs)
        self.loss_curve_ = [record.train_loss for record in result.epochs]
        self.n_ranks_ = world.size
        self.train_seconds_ = result.train_seconds
        return self

    # ---------------------------------------------------------------- using the model

    def _inputs(self, X) -> np.ndarray:
        if not hasattr(self, "network_"):
            raise _not_fitted(type(self).__name__)
        x = _check_x(X, type(self).__name__)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} features as input")
        return x

    def predict(self, X) -> np.ndarray:
        x = self._inputs(X)
        return self.classes_[predict_classes(self.network_, x)]

    def predict_proba(self, X) -> np.ndarray:
        """(n_samples, n_classes) probabilities, columns in the order of ``classes_``."""
        x = self._inputs(X)
        return probabilities(self.network_, x)

    def score(self, X, y) -> float:
        """Mean accuracy on (X, y)."""
        labels = _check_y(y, len(np.asarray(X)) if not _is_sparse(X) else X.shape[0], type(self).__name__)
        return float(np.mean(self.predict(X) == labels))

    def save(self, path, **metadata: str) -> None:
        """Write the fitted network as a pnn_mpi model file (``evaluate``/``predict`` read it).

        ``metadata`` becomes the file's ``meta_*`` entries; the command line stores
        ``dataset``, ``image_shape`` and ``ranks``, so passing those gives its very bytes.
        """
        if not hasattr(self, "network_"):
            raise _not_fitted(type(self).__name__)
        save_model(Path(path), self.network_, {k: str(v) for k, v in metadata.items()})

    # ---------------------------------------------------------------- pickling

    def __getstate__(self) -> dict:
        """The network as its architecture and one flat array: its layers are views into that
        buffer, which pickle would split into separate copies."""
        state = dict(self.__dict__)
        net = state.get("network_")
        if isinstance(net, Network):
            state["network_"] = {
                "sizes": net.sizes,
                "activation": net.activation_name,
                "output": net.output_name,
                "dtype": net.dtype.name,
                "params": net.params.copy(),
            }
        if state.get("comm") is not None:
            state["comm"] = None  # a communicator belongs to its processes
        return state

    def __setstate__(self, state: dict) -> None:
        saved = state.get("network_")
        if isinstance(saved, dict):
            net = Network(saved["sizes"], saved["activation"], saved["output"], saved["dtype"])
            net.params[...] = saved["params"]
            state["network_"] = net
        self.__dict__.update(state)


SKILL_FLOOR = 1 / 3  # "near chance": less than this share of the way from the majority rate to 100%
UNSCALED = 10.0  # inputs beyond +-this are named as the likely cause (standardized data stays well inside)


def _warn_if_near_chance(world, net: Network, inputs: np.ndarray, codes: np.ndarray, classes: np.ndarray, given: np.ndarray) -> None:
    """Warn (``NearChanceWarning``) when the trained network fits its own training data barely
    better than always answering the most common class, as the command line warns at chance
    level: silently useless models are the worst kind. Collective: every rank counts its
    slice, all agree on the sums, so every rank warns alike."""
    counts = np.bincount(codes, minlength=len(classes)).astype(np.int64)
    correct = int(np.count_nonzero(predict_classes(net, inputs) == codes))
    low, high = (float(given.min()), float(given.max())) if given.dtype != np.uint8 else (0.0, 1.0)
    shared = world.allgather((counts, correct, low, high))
    counts = np.sum([c for c, _, _, _ in shared], axis=0)
    total = int(counts.sum())
    accuracy, majority = sum(c for _, c, _, _ in shared) / total, float(counts.max()) / total
    if majority >= 1.0 or (accuracy - majority) / (1.0 - majority) >= SKILL_FLOOR:
        return
    low, high = min(s[2] for s in shared), max(s[3] for s in shared)
    cause = (
        f"the inputs range from {low:g} to {high:g}: unscaled inputs are the likely cause; scale them to about [0, 1]"
        " (divide by the largest value, or a StandardScaler in a pipeline)"
        if max(abs(low), abs(high)) > UNSCALED
        else "the learning rate (lr) or the number of epochs is the likely cause"
    )
    warnings.warn(
        f"PNNClassifier: training stayed near chance: {accuracy:.1%} of the training samples right, where always"
        f" answering the most common class gives {majority:.1%}; {cause}",
        NearChanceWarning,
        stacklevel=3,
    )


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return a is b


def _agreed(world, action):
    """Run a check on every rank; an error on any rank is raised on all (the same type), so none waits."""
    try:
        result, error = action(), None
    except (ValueError, TypeError) as exc:
        result, error = None, exc
    if world.size == 1:
        if error is not None:
            raise error
        return result
    seen = world.allgather(None if error is None else (type(error) is TypeError, str(error)))
    if error is not None:
        raise error
    first = next((e for e in seen if e), None)
    if first is not None:
        raise (TypeError if first[0] else ValueError)(first[1])
    return result


__all__ = ["PNNClassifier", "DataConversionWarning", "NearChanceWarning", "NotFittedError"]
