"""README.md and docs/ stay documentation a user can follow: short README with the two quickstart
commands, links that resolve, no process talk, no path outside the repository."""
from __future__ import annotations

import re

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
QUICKSTART = ('pip install -c constraints.txt -e . && python train.py && python demo.py',
              'pip install -c constraints.txt -e ".[test]" && python -m pytest -q')


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert all(command in text for command in QUICKSTART)


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_pages_speak_of_the_project_not_of_how_it_was_made(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\b(sessions?|issues?|this work)\b", text, flags=re.IGNORECASE)
    assert not re.search(r"\.\./shared|/work/|/root/|/home/", text), "a path outside the repository"


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+://|mailto:", target):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_configs_point_inside_the_repository():
    for config in sorted((REPO / "configs").glob("*.yaml")):
        assert "../" not in config.read_text(encoding="utf-8"), config.name
