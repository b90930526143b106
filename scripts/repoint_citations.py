"""Rewrite citations of the design notes the project was started from into citations of the repo's own docs.

One-shot, idempotent tool: ``python scripts/repoint_citations.py`` (from the repository root) rewrites every
tracked text file in place and prints the files it changed; ``--check`` only lists them and exits 1 when any
would change. Running it twice changes nothing the second time, so it can be re-run after every merge.

Mapping (section numbers are kept, so ``§3.2`` stays ``§3.2``):

- the method notes (``method.md §N``, ``method §N``, ``../shared/docs/method.md``) -> ``docs/method.md``;
- the evaluation notes (``hubness-eval.md §N``) -> ``docs/evaluation.md``;
- the pipeline notes (``pipeline-notes §N``, ``pipeline-notes.md §N``) -> ``docs/design-notes.md``;
- the environment notes (``environment.md``) -> ``docs/design-notes.md §7``;
- the architecture notes' decisions (``architecture.md``) -> ``docs/method.md §10``;
- the quirk spellings ``§8 Q5``, ``§8-Q5``, ``method.md Q7`` -> ``docs/method.md §8-Q5``.

Kept as a small regex script rather than a sed line: the rules need look-behinds (never rewrite an
already-rewritten ``docs/method.md``) and must skip this file and ``.ci/``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the tool itself, its test, and the target pages (whose bare "§8-Q1" are references within the page)
SKIP = {
    "scripts/repoint_citations.py",
    "tests/test_standalone.py",
    "docs/method.md",
    "docs/evaluation.md",
    "docs/design-notes.md",
}
SKIP_PREFIXES = (".ci/",)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".ini", ""}

_OLD = r"(?:\.\./shared/docs/|shared/docs/)"  # an outside-path prefix, dropped
_NOT_DOCS = r"(?<![\w/.-])"  # not already preceded by "docs/" or part of a longer word/path

# (pattern, replacement), applied in order to every line.
RULES: list[tuple[re.Pattern[str], str]] = [
    # outside paths to the notes themselves
    (re.compile(_OLD + r"method\.md"), "docs/method.md"),
    (re.compile(_OLD + r"hubness-eval\.md"), "docs/evaluation.md"),
    (re.compile(_OLD + r"pipeline-notes\.md"), "docs/design-notes.md"),
    (re.compile(r"\(see " + _OLD + r"environment\.md\)"), "(see docs/design-notes.md §7)"),
    (re.compile(_OLD + r"environment\.md"), "docs/design-notes.md §7"),
    (re.compile(_NOT_DOCS + r"\(environment\.md\)"), "(docs/design-notes.md §7)"),
    (re.compile(_OLD + r"architecture\.md"), "docs/method.md §10"),
    (re.compile(_NOT_DOCS + r"\(architecture\.md \"Decisions\"\)"), "(docs/method.md §10)"),
    (re.compile(_NOT_DOCS + r"\(architecture\.md\)"), "(docs/method.md §10)"),
    # quirk spellings
    (re.compile(_NOT_DOCS + r"(?:method\.md|method) §8[ -]Q(\d+b?)"), r"docs/method.md §8-Q\1"),
    (re.compile(_NOT_DOCS + r"method\.md Q(\d+b?)"), r"docs/method.md §8-Q\1"),
    (re.compile(r"(?<=docs/method\.md §8) Q(\d+b?)"), r"-Q\1"),
    # section citations
    (re.compile(_NOT_DOCS + r"method\.md §"), "docs/method.md §"),
    (re.compile(_NOT_DOCS + r"method §"), "docs/method.md §"),
    (re.compile(_NOT_DOCS + r"method\.md(?=\s*$)"), "docs/method.md"),  # "§N" wrapped onto the next line
    (re.compile(_NOT_DOCS + r"hubness-eval\.md §"), "docs/evaluation.md §"),
    (re.compile(_NOT_DOCS + r"pipeline-notes(?:\.md)? §"), "docs/design-notes.md §"),
    # bare quirk numbers after a method citation on the same line, e.g. "(official ..., §8-Q1)", "§8 Q11)"
    (re.compile(r"(?<![\w/.§-])(?<!md )§8[ -]Q(\d+b?)"), r"docs/method.md §8-Q\1"),
]

# Bare section numbers whose document is named earlier in the same file (file -> [(old, new)]).
FILE_RULES: dict[str, list[tuple[str, str]]] = {
    "eval/hubness.py": [("the identity of §1.2)", "the identity of docs/evaluation.md §1.2)")],
    "training/merging.py": [
        ("(method.md §8 Q3)", "(docs/method.md §8-Q3)"),
    ],
}


def rewrite(text: str, rel: str) -> str:
    """Return ``text`` with every rule applied (idempotent: ``rewrite(rewrite(t)) == rewrite(t)``)."""
    for old, new in FILE_RULES.get(rel, []):
        text = text.replace(old, new)
    out = []
    for line in text.splitlines(keepends=True):
        for pat, rep in RULES:
            line = pat.sub(rep, line)
        out.append(line)
    return "".join(out)


def tracked_files(root: Path) -> list[str]:
    """Paths (relative, POSIX) of the files git tracks in ``root``; a walk when ``root`` is not a git checkout."""
    try:
        res = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=60)
        return [p for p in res.stdout.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        return [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts
        ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="list files that would change; exit 1 if any")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this script's repo)")
    args = ap.parse_args(argv)
    changed = []
    for rel in tracked_files(args.root):
        if rel in SKIP or rel.startswith(SKIP_PREFIXES) or Path(rel).suffix not in TEXT_SUFFIXES:
            continue
        path = args.root / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite(text, rel)
        if new != text:
            changed.append(rel)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for rel in changed:
        sys.stdout.write(rel + "\n")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
