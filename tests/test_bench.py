"""``bench``: every row and the memory table are printed, --json is valid, --help is accurate.

No timing is asserted: the figures depend on the machine; only their presence
and shape are checked, with windows too short to mean anything.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_pnn
from pnn_mpi.commands import bench
from pnn_mpi.nn import kernels
from pnn_mpi.parallel.comm import SerialWorld

QUICK = ["--seconds", "0.02", "--repeats", "1", "--sync-calls", "2", "--hidden", "16"]


def kernel_rows() -> list[str]:
    return ["batch-1 kernel, numpy"] + (["batch-1 kernel, numba"] if kernels.numba_available() else [])


def fused_rows(batch: int) -> list[str]:
    """The fused numba step's row of a mini-batch size, when numba is installed."""
    return [f"train step, batch {batch}, numba"] if kernels.numba_available() else []


def test_one_rank_prints_every_row_and_writes_json(tmp_path):
    """A real run (one MPI rank, no launcher): the step rows, the kernel rows, the sync row, the
    memory table; the JSON file holds the same rows with positive figures and every rank's memory."""
    out = tmp_path / "bench.json"
    result = run_pnn("bench", *QUICK, "--json", str(out), timeout=240)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    expected = [
        "train step, batch 1",
        *kernel_rows(),
        "train step, batch 32",
        *fused_rows(32),
        "step overhead, batch 32",
        "whole run, batch 32",
        *["whole run, batch 32, numba" for _ in fused_rows(32)],
        "parameter sync (parameters and momentum: 25,460 float32)",
        "parameter sync, back to back",
    ]
    for what in expected:
        assert what in text, f"no row {what!r} in:\n{text}"
    assert "per-sample numpy loop" in text and "bare matrix products" in text and "bare in-place Allreduce, in a training loop" in text
    assert "bare products + batch gather + SGD update" in text
    assert "baseline" in text and "parameter copies" in text
    record = json.loads(out.read_text())
    assert record["ranks"] == 1 and record["network"] == [784, 16, 10]
    assert [r["what"] for r in record["rows"]] == expected
    for row in record["rows"]:
        assert row["unit"] and row["reference_is"]
        if row["unit"].startswith("samples"):
            assert row["value"] > 0 and row["reference"] > 0
        else:  # a sync net of a step: at one rank a difference of two near-equal times, of either sign
            assert math.isfinite(row["value"]) and math.isfinite(row["reference"])
    (memory,) = record["memory_bytes"]
    assert memory["baseline"] > 0 and memory["rss"] >= memory["file"] > 0
    assert memory["slice"] == bench.SAMPLES * (784 * 4 + 8) and memory["params"] == 12730 * 4
    assert (memory["numba"] > 0) == kernels.numba_available()


def test_in_process_without_mpi(capsys):
    """With a world that has no communicator the sync row is left out, with a note saying so;
    float64 and a two-layer network work too."""
    assert bench.main([*QUICK[:4], "--hidden", "8", "4", "--batch-sizes", "1", "5", "--dtype", "float64"], world=SerialWorld()) == 0
    out = capsys.readouterr().out
    for what in ["train step, batch 1", *kernel_rows(), "train step, batch 5", *fused_rows(5), "step overhead, batch 5", "whole run, batch 5"]:
        assert what in out
    assert "parameter sync" not in out and "no MPI communicator" in out
    assert "bare matrix products" in out and "per-sample numpy loop" not in out  # two hidden layers: no naive loop


def test_help_describes_every_option(capsys):
    """--help lists every option and says what is compared with what."""
    with pytest.raises(SystemExit) as info:
        bench.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--hidden", "--batch-sizes", "--momentum", "--dtype", "--seconds", "--repeats", "--sync-calls", "--json"):
        assert flag in out
    assert "batch-1 kernels" in out and "fused numba step" in out and "Allreduce" in out


def test_bad_momentum_is_a_user_error():
    from pnn_mpi.common.errors import UserError

    with pytest.raises(UserError, match="--momentum"):
        bench.main(["--momentum", "1.5"], world=SerialWorld())


def test_output_says_microseconds_and_keeps_lines_short():
    """Issue 11: 'us' for µs, and a 400-character legend line."""
    result = run_pnn("bench", *QUICK, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "µs per sync" in result.stdout and " us " not in result.stdout
    long = [line for line in result.stdout.splitlines() if len(line) > 160]  # the table rows fit; the legend was one 400-character line
    assert not long, long
