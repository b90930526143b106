"""The repository stands on its own: no file names a path outside it, and every doc citation resolves.

1. No tracked file outside ``.ci/`` names the design notes' folder beside the clone, the external data folder, or
   an absolute path on a developer machine (``/work/``, ``/home/``, ``/root/``, ``/Users/``, ``/opt/``). Only
   ``.ci/`` may name the external data location; tests find it through ``NEIGHBORRETR_EXTERNAL_DATA``.
2. Every citation ``docs/X.md §N`` (``§3.2``, ``§8-Q7``, and ``§N`` lists after one: ``docs/X.md §5.1, §8``)
   names an existing page and a heading numbered ``N`` in it (``## 8. ...``, ``### 3.2 ...``); a ``-Qn`` suffix
   also needs a bold ``**Qn.`` entry on that page.
3. ``scripts/repoint_citations.py --check`` finds nothing left to rewrite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The citation sweep tool has to recognise the old spellings it rewrites; this test names them to forbid them.
EXEMPT = {"tests/test_standalone.py", "scripts/repoint_citations.py"}
FORBIDDEN = re.compile(
    r"\.\./shared|shared/docs|shared/data"
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
        "see ../shared/docs/method.md",
        "Path('/work/shared/data/x.csv')",
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


def test_citation_sweep_has_nothing_left_to_do():
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "repoint_citations.py"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, "scripts/repoint_citations.py would still rewrite:\n" + res.stdout


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


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("(method.md §8 Q5)", "(docs/method.md §8-Q5)"),
        ("(method §2.8)", "(docs/method.md §2.8)"),
        ("evidence: `../shared/docs/method.md` §8.", "evidence: `docs/method.md` §8."),
        ("(hubness-eval.md §3.4)", "(docs/evaluation.md §3.4)"),
        ("again, pipeline-notes §0.4)", "again, docs/design-notes.md §0.4)"),
        ("(pipeline-notes.md §0.5)", "(docs/design-notes.md §0.5)"),
        ("imports (see ../shared/docs/environment.md).", "imports (see docs/design-notes.md §7)."),
        ("to 2e-7 (environment.md); see", "to 2e-7 (docs/design-notes.md §7); see"),
        ("Why l2norm (method.md Q7): with", "Why l2norm (docs/method.md §8-Q7): with"),
        ("(official: fp16 CLIP weights, §8-Q1)", "(official: fp16 CLIP weights, docs/method.md §8-Q1)"),
        ('one token (architecture.md "Decisions").', "one token (docs/method.md §10)."),
        ("(k <= batch - 3, method §8-Q13b)", "(k <= batch - 3, docs/method.md §8-Q13b)"),
        ("(docs/method.md §5.1, §8)", "(docs/method.md §5.1, §8)"),
        ("def test_minmax_toy_row_from_method_md():", "def test_minmax_toy_row_from_method_md():"),
    ],
)
def test_repoint_rules_and_idempotence(old, new):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import repoint_citations
    finally:
        sys.path.pop(0)
    assert repoint_citations.rewrite(old, "x.py") == new
    assert repoint_citations.rewrite(new, "x.py") == new
