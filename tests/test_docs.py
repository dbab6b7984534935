"""The README as a front page and the docs it links to: short, linked right, its example runs.

The site itself is checked by ``make docs`` (Sphinx with -W -n: a broken link between its
pages or to an #anchor fails the build); the README is not part of the site, so its links
into ``docs/`` are checked here, the way GitHub resolves them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MyST's heading anchors both make it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#+ (.+)", line)):
            found.add(slug(match.group(1)))
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", target)]


def test_the_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines"
    assert "make test" in README.read_text()  # CI runs the README's test command


@pytest.mark.parametrize("target", relative_links(README))
def test_every_readme_link_resolves(target):
    path, _, anchor = target.partition("#")
    page = (REPO / path) if path else README
    assert page.is_file(), f"README.md links to {path}, which does not exist"
    if anchor:
        assert anchor in anchors(page), f"README.md links to {target}: {path} has no heading with that anchor"


def test_every_docs_page_is_linked_from_the_readme_or_the_index():
    linked = {Path(target.partition("#")[0]).name for target in relative_links(README)}
    in_toctree = {line.strip() for line in (REPO / "docs" / "index.md").read_text().splitlines()}
    for page in sorted((REPO / "docs").glob("*.md")):
        assert page.name in linked and (page.stem in in_toctree or page.name == "index.md"), page.name


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_estimator_example_runs_under_mpiexec(ranks, tmp_path):
    """docs/estimator.md shows this file: every rank fits on its share and all agree on the network."""
    pytest.importorskip("sklearn")
    example = REPO / "docs" / "examples" / "fit_under_mpiexec.py"
    command = [sys.executable, str(example)]
    if ranks > 1:
        command = ["mpiexec", "-n", str(ranks), *command]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPIEXEC_TIMEOUT": "240", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"ranks: (\d+), epochs: 20, test accuracy: ([\d.]+)", proc.stdout)
    assert found, proc.stdout
    assert int(found.group(1)) == ranks and float(found.group(2)) >= 0.9
    assert (tmp_path / "digits-model.npz").is_file()
    assert "{literalinclude} examples/fit_under_mpiexec.py" in (REPO / "docs" / "estimator.md").read_text()
