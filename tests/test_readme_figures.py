"""make readme-figures: each figure it prints names a README section that exists, and the README names it."""

from __future__ import annotations

import re

from conftest import REPO


def test_every_section_it_names_is_in_the_readme():
    source = (REPO / "pnn_mpi" / "readme_figures.py").read_text()
    readme = (REPO / "README.md").read_text().replace("`", "")
    named = set(re.findall(r"README '([^']+)'", source))
    assert {"Two commands", "Tests", "Speed", "A validation split", "Progress inside long epochs"} <= named
    for title in named:
        assert title in readme, title
    assert "make readme-figures" in readme
    assert re.search(r"^readme-figures:", (REPO / "Makefile").read_text(), re.M)
