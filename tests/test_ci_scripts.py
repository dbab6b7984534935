"""What the CI scripts print about the machine (issue 11: nproc obeys OMP_NUM_THREADS)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import REPO


@pytest.mark.parametrize("script", [".ci/run", ".ci/slurm-tests"])
def test_ci_scripts_count_the_real_cores(script):
    """`nproc` says 1 under the Makefile's OMP_NUM_THREADS=1; every core count they print must not."""
    text = (REPO / script).read_text()
    counts = re.findall(r"\$\(([^()]*nproc[^()]*)\) cores", text)
    assert counts, f"{script} prints no core count"
    for expression in counts:
        said = subprocess.run(["bash", "-c", expression], capture_output=True, text=True, timeout=10, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.strip()
        assert said == str(len(os.sched_getaffinity(0))), expression
