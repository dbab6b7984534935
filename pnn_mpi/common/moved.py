"""The modules' old names, from before they moved into layer folders, kept working.

``from pnn_mpi.network import Network`` and ``python -m pnn_mpi.torch_compare`` were
documented before the package was cut into layers; scripts that use them keep
running. An old name is found here, warns once (``DeprecationWarning``) and is the
new module itself, not a copy, so classes and state are shared; ``python -m`` with an
old name runs the new module as ``__main__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import pkgutil
import sys
import warnings
from pathlib import Path

PACKAGE = "pnn_mpi"
LAYERS = ("common", "nn", "data", "parallel", "training", "report", "commands")  # the folders that took the flat modules


EXPORTED = ("train",)  # names the package itself exports now: an old module of that name would shadow them


def moved_names() -> dict[str, str]:
    """old module name -> new one, for every module of the layers' folders (``pnn_mpi.network`` -> ``pnn_mpi.nn.network``)."""
    root = Path(__file__).resolve().parents[1]
    return {
        f"{PACKAGE}.{info.name}": f"{PACKAGE}.{layer}.{info.name}"
        for layer in LAYERS
        for info in pkgutil.iter_modules([str(root / layer)])
        if info.name not in ("moved", *EXPORTED)
    }


class _Alias(importlib.abc.Loader):
    """Loads an old name as the new module (imports), or runs the new module's code (``python -m``)."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import machinery set the old name's spec on it: give its own back

    def get_code(self, name: str):
        """What ``python -m <old name>`` runs: the new module as ``__main__``, in its own package
        (so its relative imports resolve from where it lives now)."""
        return compile(f"import runpy; runpy.run_module({self.new!r}, run_name='__main__', alter_sys=True)", f"<{name}, moved to {self.new}>", "exec")


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds ``pnn_mpi.<old name>`` and answers with the module at its new place."""

    def __init__(self) -> None:
        self.names: dict[str, str] | None = None

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith(PACKAGE + ".") or fullname.count(".") != 1:
            return None
        if self.names is None:
            self.names = moved_names()
        new = self.names.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old name will go in a later version", DeprecationWarning, stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (after the normal finders: a real module always wins)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
