"""make readme-figures: each figure it prints names a docs page and section that exist, and the pages name it."""

from __future__ import annotations

import re

import pytest

from conftest import REPO
from pnn_mpi.commands import readme_figures


def headings(page: str) -> list[str]:
    """The section headings of a Markdown page (lines in fenced code blocks are not headings)."""
    found, fenced = [], False
    for line in (REPO / page).read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#+ (.+)", line)):
            found.append(match.group(1).strip())
    return found


@pytest.mark.parametrize("figure", sorted(readme_figures.SHOWN_IN))
def test_every_section_it_names_is_on_its_page(figure):
    page, heading = readme_figures.SHOWN_IN[figure]
    assert heading in headings(page), f"{page} has no section {heading!r}"


def test_every_figure_it_prints_names_its_page():
    source = (REPO / "pnn_mpi" / "commands" / "readme_figures.py").read_text()
    assert "README '" not in source
    assert set(re.findall(r"""where\(["']([^"']+)["']\)""", source)) == set(readme_figures.SHOWN_IN)


def test_the_readme_the_pages_and_the_makefile_name_it():
    assert "make readme-figures" in (REPO / "README.md").read_text()
    assert "make readme-figures" in (REPO / "docs" / "running.md").read_text()
    assert re.search(r"^readme-figures:", (REPO / "Makefile").read_text(), re.M)
