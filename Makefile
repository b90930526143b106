# The two quickstart commands (README): `make demo` and `make test`. Both set up .venv on first use.
.PHONY: setup demo compare test lint

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

compare: setup
	bash scripts/demo.sh --compare

test: setup
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check .
