"""Calibrating: run the measurement jobs and turn their timings into a ``Calibration``.

Compute with one rank and with one rank per core; the Allreduce with two ranks
over shared memory and, when two namespace nodes can be made (root), over TCP
between them. For the validation (``for_validation``), also what only this
machine's own runs meet: compute with two ranks to a core, and the gradient
Allreduce between real steps at each place the validation launches. Links are fitted on the structure of the algorithm that will
replay them: SimGrid's own when it is installed (by replaying the measured
sizes on trial links), the analytic model's otherwise.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
import shutil
from pathlib import Path

from . import calibrate, model, simulate, twonodes
from .costs import Calibration, Link
from .launches import job, scratch
from .platforms import from_xml
from .validate import PLACES


def _trial_platform(link: Link, same_host: bool):
    """Two ranks joined by ``link``: on one host through its loopback, or on two hosts."""
    attrs = (
        f'bw="{link.bandwidth:.6g}Bps" lat="{link.latency / 2:.6g}s" loopback_bw="{link.bandwidth:.6g}Bps" '
        f'loopback_lat="{link.latency:.6g}s" bb_bw="{2 * link.bandwidth:.6g}Bps" bb_lat="0s"'
    )
    radical = "0-0" if same_host else "0-1"
    cores = 2 if same_host else 1
    xml = (
        '<?xml version=\'1.0\'?>\n<!DOCTYPE platform SYSTEM "https://simgrid.org/simgrid.dtd">\n<platform version="4.1">\n'
        f'<zone id="trial" routing="Full"><cluster id="pair" prefix="h" suffix="" radical="{radical}" core="{cores}" speed="1Gf" '
        f'sharing_policy="SPLITDUPLEX" {attrs}/></zone>\n</platform>\n'
    )
    return from_xml("trial", xml)


def _analytic_coefficients(same_host: bool):
    unit = _trial_platform(Link(1.0, 1.0), same_host)

    def coefficients(nbytes: int) -> tuple[float, float]:
        if nbytes < model.SMALL_MESSAGE:  # timed as what the check costs: one exchange
            return model.barrier(unit, 2).latency, 0.0
        cost = model.allreduce(unit, 2, nbytes)
        return cost.latency, cost.bandwidth

    return coefficients


def _simgrid_seconds(link: Link, same_host: bool, nbytes: int, work: Path) -> float:
    from .costs import StepCost
    from .program import Allreduce, Phase

    plat = _trial_platform(link, same_host)
    phase = Phase("trial", (Allreduce(nbytes // 4, 4, "average" if nbytes >= model.SMALL_MESSAGE else "check"),))
    folder = work / f"trial-{nbytes}"
    listing = simulate.traces.write(folder, phase, 2, StepCost(0.0, 0.0))
    try:
        return simulate.replay(plat, 2, listing, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fit(timings: dict[str, float], same_host: bool, use_simgrid: bool, work: Path) -> Link:
    """The link that reproduces ``timings`` under the analytic model, refined on SimGrid's replay if wanted.

    SimGrid's time for one Allreduce is linear in the latency and in 1/bandwidth
    near the operating point, so its coefficients are read off two trial replays
    per size and the least-squares fit is redone with them.
    """
    link = calibrate.fit_link(timings, _analytic_coefficients(same_host))
    if not use_simgrid:
        return link
    for _ in range(2):
        coeff = {}
        for count in timings:
            nbytes = int(count) * 4
            base = _simgrid_seconds(link, same_host, nbytes, work)
            slower = _simgrid_seconds(Link(link.latency * 2, link.bandwidth), same_host, nbytes, work)
            narrower = _simgrid_seconds(Link(link.latency, link.bandwidth / 2), same_host, nbytes, work)
            a = (slower - base) / link.latency
            b = (narrower - base) * link.bandwidth
            coeff[nbytes] = (a, b)
        link = calibrate.fit_link(timings, lambda nbytes: coeff[nbytes])
    return link


def _in_loop(where: str, ranks: int, models, samples: int, repeats: int, work: Path, log) -> dict:
    log(f"calibration: gradient Allreduce between real steps, {ranks} ranks {'on the cores' if where == 'local' else 'on the namespace nodes'}")
    name = f"in-loop-{where}-{ranks}"
    with twonodes.up_for(where):
        args = ["-m", "pnn_mpi.scaling.calibrate", "in-loop", "--out", str(work / f"{name}.json"), "--samples", str(samples), "--repeats", str(repeats)]
        job(where, ranks, [*args, "--models", *models], work / name)
    return json.loads((work / f"{name}.json").read_text())


def _compute(work: Path, ranks: int, samples: int, repeats: int, sync: str, models, suffix: str, log) -> dict:
    """Seconds per step of every model at ``ranks`` ranks on this machine (the calibrate child's)."""
    log(f"calibration: compute, {ranks} rank{'s' * (ranks > 1)}, {samples} samples per rank, {repeats} repeat(s), --sync {sync}")
    name = f"compute-{ranks}"
    args = ["-m", "pnn_mpi.scaling.calibrate", "compute", "--out", str(work / f"{name}.json"), "--samples", str(samples)]
    job("local", ranks, [*args, "--repeats", str(repeats), "--sync", sync, "--models", *models], work / name)
    return json.loads((work / f"{name}.json").read_text())["seconds_per_step" + suffix]


def _allreduces(work: Path, measured: dict, tcp: bool, quick: bool, log) -> None:
    """Allreduce timings over shared memory and, when a second node can be had, over TCP, into ``measured``."""
    counts = calibrate.COUNTS if not quick else (2, 2048, 16384, 101770)
    places = [("shm", "local")]
    reason = twonodes.why_not() if tcp else "not asked for (--no-tcp)"
    if reason is None:
        places.append(("tcp", "twonodes"))
    else:
        measured["tcp_unavailable"] = reason
        log(f"calibration: no TCP measurement: {reason}")
    for name, where in places:
        log(f"calibration: Allreduce over {name}, 2 ranks")
        with twonodes.up_for(where):
            before = twonodes.bytes_crossed() if where == "twonodes" else 0
            args = ["-m", "pnn_mpi.scaling.calibrate", "allreduce", "--out", str(work / f"allreduce-{name}.json"), "--counts", *map(str, counts)]
            job(where, 2, [*args, "--repeats", str(3 if quick else 5)], work / f"allreduce-{name}")
            record = json.loads((work / f"allreduce-{name}.json").read_text())
            if where == "twonodes":
                record["bytes_crossed"] = twonodes.bytes_crossed() - before
        measured["allreduce"][name] = record


def _step_costs(measured: dict, cores: int) -> dict:
    """Each model's step cost alone on a core ("one"), with every core busy ("all") and, when measured,
    two ranks to a core ("over": a rank's wall seconds while it shares its core with one other)."""
    compute = {
        m: {"one": calibrate.step_cost(measured["compute"]["1"][m]), "all": calibrate.step_cost(measured["compute"][str(cores)][m])}
        for m in measured["compute"]["1"]
    }
    if str(2 * cores) in measured["compute"]:
        for m, per_batch in measured["compute"][str(2 * cores)].items():
            compute[m]["over"] = calibrate.step_cost({b: t / 2 for b, t in per_batch.items()})
    return compute


def run(
    out: Path,
    quick: bool = False,
    tcp: bool = True,
    log=print,
    models=calibrate.SIZES,
    estimator: str = "median",
    for_validation: bool = False,
    sync: str = "end",
) -> Calibration:
    """Measure this machine (the step cost of ``models``, the links) and write ``out/calibration.json``.

    ``estimator`` picks from the repeats: "median" (what a run at the same time
    meets: the validation) or "min" (the least disturbed repeat: the machine is
    shared, and the predicted machines' cores are not). ``sync`` is the schedule
    the compute is measured under (the validation measures each case under its own).
    """
    suffix = "" if estimator == "median" else "_min"
    out.mkdir(parents=True, exist_ok=True)
    work = scratch("pnn-scaling-cal-")
    cores = os.cpu_count() or 1
    samples, repeats = (2048, 1) if quick else (16384, 3)
    measured: dict = {"compute": {}, "allreduce": {}, "load_average_before": os.getloadavg()[0], "compute_sync": sync}
    try:
        for ranks in sorted({1, cores} | ({2 * cores} if for_validation else set())):
            measured["compute"][str(ranks)] = _compute(work, ranks, samples, repeats, sync, models, suffix, log)
        _allreduces(work, measured, tcp, quick, log)
        in_loop: dict[str, dict[str, float]] = {}
        if for_validation:
            for plat_name, where, ranks in PLACES:
                if ranks > 1 and (where == "local" or "tcp" in measured["allreduce"]):
                    record = _in_loop(where, ranks, models, samples, repeats, work, log)
                    measured.setdefault("in_loop", {})[f"{plat_name}:{ranks}"] = record
                    in_loop[f"{plat_name}:{ranks}"] = record["seconds" + suffix]
        use_simgrid = simulate.available()
        links = {name: fit(rec["seconds" + suffix], name == "shm", use_simgrid, work) for name, rec in measured["allreduce"].items()}
        measured["estimator"] = estimator
        measured["links_fitted_on"] = "SimGrid replay" if use_simgrid else "analytic model"
        measured["load_average_after"] = os.getloadavg()[0]
        cal = Calibration(
            machine=f"{host_platform.node()} ({cores} cores, {host_platform.machine()}, shared)",
            cores=cores,
            compute=_step_costs(measured, cores),
            links=links,
            measured=measured,
            in_loop=in_loop,
        )
        (out / "calibration.json").write_text(cal.to_json())
        return cal
    finally:
        shutil.rmtree(work, ignore_errors=True)
