"""The README and the docs site as their readers meet them: a short README, pages that
build, no development journal anywhere, test names only where promises are mapped to
them, and every test the guarantees page names there to run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Pages for the people who run the forwarder: no test names there.
USER_PAGES = [README, *sorted(page for page in DOCS.glob("*.md")
                              if page.name not in ("guarantees.md", "development.md"))]
JOURNAL = re.compile(r"\b(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|"
                     r"eleventh|twelfth) (work )?session\b|\bnot kept\b|\bissue \d+\b",
                     re.IGNORECASE)


def test_the_readme_is_short_and_dateless():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert re.findall(r"\b\d{4}-\d{2}-\d{2}\b", text) == []


def test_the_docs_site_builds_strictly(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "troubleshooting" / "index.html").exists()


def test_user_pages_name_no_tests():
    named = {page.name: re.findall(r"\btest_\w+|\btests/", page.read_text())
             for page in USER_PAGES}
    assert {page: names for page, names in named.items() if names} == {}


def test_no_page_or_module_tells_the_projects_history():
    """History goes to CHANGELOG.md and git, not to the docs or the code's comments."""
    places = [README, *DOCS.glob("*.md"), *(path for folder in (
        "pipeline", "transforms", "tests", "benchmarks", "deploy", "tools") for path in (
        ROOT / folder).rglob("*") if path.suffix in (".py", ".md", ".sh", ".yaml"))]
    this = Path(__file__).resolve()
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in places if path.resolve() != this
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if JOURNAL.search(line)]
    assert found == []


def test_every_test_the_guarantees_page_names_exists():
    text = (DOCS / "guarantees.md").read_text()
    tests = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for reference in re.findall(r"`([^`]*test_[^`]*)`", text):
        file_part, _, name = reference.partition("::")
        path = ROOT / file_part if "/" in file_part else tests.get(file_part)
        if path is None or not path.exists():
            missing.append(reference)
        elif name and not re.search(rf"^\s*def {re.escape(name)}\(", path.read_text(), re.M):
            missing.append(reference)
    assert missing == []
    assert len(re.findall(r"::test_", text)) >= 30
