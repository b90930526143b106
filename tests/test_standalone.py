"""The repository stands on its own: no file names a path outside it, and every doc citation resolves.

1. No tracked file outside ``.ci/`` names the design notes' folder beside the clone, the external data folder, or
   an absolute path on a developer machine (``/work/``, ``/home/``, ``/root/``, ``/Users/``, ``/opt/``). Only
   ``.ci/`` may name the external data location; tests find it through ``NEIGHBORRETR_EXTERNAL_DATA``.
2. Every citation ``docs/X.md §N`` (``§3.2``, ``§8-Q7``, and ``§N`` lists after one: ``docs/X.md §5.1, §8``)
   names an existing page and a heading numbered ``N`` in it (``## 8. ...``, ``### 3.2 ...``); a ``-Qn`` suffix
   also needs a bold ``**Qn.`` entry on that page.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The outside folder's name is assembled, so that this file does not spell the paths it forbids.
_OUT = "sha" + "red"
EXEMPT = {"tests/test_standalone.py"}
FORBIDDEN = re.compile(
    rf"\.\./{_OUT}|{_OUT}/docs|{_OUT}/data"
    r"|(?<![\w.:/~-])/(?:work|home|root|Users|opt)/"
)
CITATION = re.compile(
    r"docs/([\w.-]+\.md)`?\s*§(\d+(?:\.\d+)*)(?:-(Q\d+b?))?((?:\s*[,;]\s*§\d+(?:\.\d+)*(?:-Q\d+b?)?)*)"
)
FOLLOW = re.compile(r"§(\d+(?:\.\d+)*)(?:-(Q\d+b?))?")


def _tracked() -> list[str]:
    res = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=60)
    if res.returncode != 0:
        pytest.skip(f"not a git checkout ({res.stderr.decode().strip()}); the walk needs `git ls-files`")
    return [p for p in res.stdout.decode().split("\0") if p and (REPO / p).is_file()]


def _texts():
    for rel in _tracked():
        try:
            yield rel, (REPO / rel).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def test_no_file_names_a_path_outside_the_repo():
    bad = [
        f"{rel}:{n}: {line.strip()}"
        for rel, text in _texts()
        if not rel.startswith(".ci/") and rel not in EXEMPT
        for n, line in enumerate(text.splitlines(), start=1)
        if FORBIDDEN.search(line)
    ]
    assert not bad, "paths outside the repository:\n" + "\n".join(bad)


def test_forbidden_pattern_catches_what_it_should():
    for line in (
        f"see ../{_OUT}/docs/method.md",
        f"Path('/work/{_OUT}/data/x.csv')",
        "/home/me/v.mp4",
        "(/root/x)",
    ):
        assert FORBIDDEN.search(line), line
    for line in ("s3://bkt/root/clips/a.mp4", "docs/method.md §2", "/data/clips/a.mp4", "runs/home/x"):
        assert not FORBIDDEN.search(line), line


def _headings(page: Path) -> tuple[set[str], set[str]]:
    text = page.read_text(encoding="utf-8")
    numbers = set(re.findall(r"^#{1,6}\s+(\d+(?:\.\d+)*)[.\s]", text, flags=re.M))
    quirks = set(re.findall(r"\*\*(Q\d+b?)\.", text))
    return numbers, quirks


def citations(text: str) -> list[tuple[str, str, str | None]]:
    """(page, section, quirk or None) for every ``docs/X.md §N`` citation of ``text``, lists included."""
    out = []
    for m in CITATION.finditer(text):
        out.append((m.group(1), m.group(2), m.group(3)))
        out.extend((m.group(1), f.group(1), f.group(2)) for f in FOLLOW.finditer(m.group(4) or ""))
    return out


def test_citation_parser():
    text = "x (docs/method.md §5.1, §8-Q3; docs/evaluation.md §3.4) `docs/method.md` §8 and docs/design-notes.md §0.4."
    assert citations(text) == [
        ("method.md", "5.1", None),
        ("method.md", "8", "Q3"),
        ("evaluation.md", "3.4", None),
        ("method.md", "8", None),
        ("design-notes.md", "0.4", None),
    ]


def test_every_doc_citation_points_to_an_existing_section():
    cache: dict[str, tuple[set[str], set[str]] | None] = {}
    bad = []
    n_cited = 0
    for rel, text in _texts():
        if rel in EXEMPT:
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            for page, sec, quirk in citations(line):
                n_cited += 1
                if page not in cache:
                    path = REPO / "docs" / page
                    cache[page] = _headings(path) if path.is_file() else None
                found = cache[page]
                if found is None:
                    bad.append(f"{rel}:{n}: docs/{page} does not exist")
                elif sec not in found[0]:
                    bad.append(f"{rel}:{n}: docs/{page} has no section {sec}")
                elif quirk and quirk not in found[1]:
                    bad.append(f"{rel}:{n}: docs/{page} has no entry **{quirk}.")
    assert n_cited > 50  # the code cites the docs throughout; a parser that finds nothing must fail
    assert not bad, "dangling citations:\n" + "\n".join(bad)


def test_tests_named_in_the_docs_exist():
    """The method and evaluation pages give tests as evidence (`test_x.py::test_y` or a bare `test_y`)."""
    defs = {
        p.stem: set(re.findall(r"^def (test_\w+)", p.read_text(encoding="utf-8"), flags=re.M))
        for p in (REPO / "tests").glob("test_*.py")
    }
    every = set().union(*defs.values())
    bad = []
    checked = 0
    for page in sorted((REPO / "docs").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        checked += len(re.findall(r"test_\w+\.py::test_\w+|`test_\w+`", text))
        for f, name in re.findall(r"(test_\w+)\.py::(test_\w+)", text):
            if name not in defs.get(f, set()):
                bad.append(f"docs/{page.name}: {f}.py::{name}")
        for name in re.findall(r"`(test_\w+)`", text):
            if name not in every and name not in defs:
                bad.append(f"docs/{page.name}: {name}")
    assert checked > 20  # docs/method.md cites its evidence; finding none means the pattern broke
    assert not bad, "tests named in the docs that do not exist:\n" + "\n".join(bad)
