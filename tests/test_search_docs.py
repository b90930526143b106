"""docs/search.md: its bash blocks run in the docs sandbox (after datasets.md and training.md) and do what it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_docs_commands import fenced_blocks, sandbox  # noqa: F401 - the module-scoped sandbox fixture
from train_fixtures import REPO as _REPO

REPO = Path(_REPO)


def test_search_page_has_runnable_blocks():
    blocks = fenced_blocks(REPO / "docs" / "search.md")
    assert sum(b.lang == "bash" for b in blocks) == 3


@pytest.mark.slow
def test_search_page_runs(sandbox):  # noqa: F811
    sandbox.run_page("search.md", needs=("datasets.md", "training.md"))
    run = sandbox.root / "runs" / "msrvtt"
    manifest = json.loads((run / "index" / "manifest.json").read_text())
    assert manifest["videos"] == 6 and manifest["bank"]["queries"] == 24
    hits = json.loads((run / "hits.json").read_text())
    assert [h["query"] for h in hits] == ["a man is singing", "a dog runs on the grass"]
    assert all(len(h["results"]) == 2 for h in hits)
    api = json.loads((run / "api_hits.json").read_text())
    assert len(api["results"]) == 3 and api["results"][0]["thumbnail"].startswith("/thumb/")
    assert "query: a man is singing" in sandbox.results["search.md"].stdout
