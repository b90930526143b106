# The two quickstart commands (README): `make demo` and `make test`. Both set up .venv on first use.
.PHONY: setup demo compare test lint lock

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

# Regenerate requirements.lock (exact pins of every dependency, test extra included) from pyproject.toml's ranges;
# run it after changing dependencies in pyproject.toml and commit the lock. Pins already in the lock are kept when
# they still satisfy the ranges; `make lock LOCK_FLAGS=--upgrade` re-resolves everything to the newest versions.
# pip-tools uses pip's resolver, so the machine's pip configuration (index, local wheel folders) applies.
LOCK_FLAGS ?=
lock:
	@test -x .venv/bin/python || python3 -m venv .venv
	@.venv/bin/python -m pip show -q pip-tools >/dev/null 2>&1 || .venv/bin/python -m pip install -q 'pip-tools>=7.4'
	CUSTOM_COMPILE_COMMAND="make lock" .venv/bin/python -m piptools compile --quiet $(LOCK_FLAGS) --extra test \
	  --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  -o requirements.lock pyproject.toml
