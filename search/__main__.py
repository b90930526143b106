"""``python -m search index|search|serve ...`` (the same as ``nr-index`` / ``nr-search`` / ``nr-search serve``)."""

from search.cli import main

raise SystemExit(main())
