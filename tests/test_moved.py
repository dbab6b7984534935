"""The modules' old names (before the layer folders) keep working: the same module, a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from conftest import REPO
from pnn_mpi.common import moved


@pytest.mark.parametrize("old, new", [("network", "nn.network"), ("comm", "parallel.comm"), ("config", "training.config"), ("bench", "commands.bench")])
def test_an_old_name_is_the_new_module_and_warns(old, new):
    sys.modules.pop(f"pnn_mpi.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"pnn_mpi.{old} moved to pnn_mpi.{new}"):
        module = importlib.import_module(f"pnn_mpi.{old}")
    assert module is importlib.import_module(f"pnn_mpi.{new}")
    assert module.__spec__.name == f"pnn_mpi.{new}"  # its own spec, not the alias's


def test_every_moved_module_has_its_old_name_but_the_exported_train():
    names = moved.moved_names()
    assert names["pnn_mpi.torch_compare"] == "pnn_mpi.commands.torch_compare"
    assert "pnn_mpi.train" not in names  # pnn_mpi.train is the exported function now
    for old, new in names.items():
        assert new.rsplit(".", 1)[1] == old.rsplit(".", 1)[1] and importlib.util.find_spec(new) is not None


def test_a_name_that_never_was_is_still_not_found():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("pnn_mpi.no_such_module")


@pytest.mark.parametrize("old, prog", [("torch_compare", "pnn_mpi.commands.torch_compare"), ("readme_figures", "pnn_mpi.commands.readme_figures")])
def test_python_m_with_an_old_name_runs_the_command(old, prog):
    proc = subprocess.run([sys.executable, "-m", f"pnn_mpi.{old}", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {prog}")
