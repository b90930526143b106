#!/usr/bin/env bash
# Creates .venv in the repository and installs the exact versions pinned in requirements.lock (the test extra
# included), then the project itself without dependencies (idempotent: re-runs only when requirements.lock or
# pyproject.toml changed). `make lock` regenerates the lock from pyproject.toml's ranges. Without a lock (or with
# NR_NO_LOCK=1) it installs from pyproject.toml's ranges instead. Installs Debian's ffmpeg (ffmpeg + ffprobe) when
# running as root and it is missing; without root, the ffmpeg binary from the imageio-ffmpeg wheel is used and
# ffprobe-based checks are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v ffprobe >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing ffmpeg (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
    || echo "[setup] apt-get ffmpeg failed; falling back to imageio-ffmpeg's binary"
fi
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing chromium (apt-get; the search page test drives it headless)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[setup] apt-get chromium failed; the headless page test will skip"
fi
if [ ! -d /usr/share/doc/opencv-doc ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing opencv-doc (apt-get; its real AVIs are test inputs of the decoding tests)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opencv-doc >/dev/null) \
    || echo "[setup] apt-get opencv-doc failed; the tests that read its AVIs will skip"
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [ -f requirements.lock ] && [ -z "${NR_NO_LOCK:-}" ]; then
    echo "[setup] pip install -r requirements.lock, then -e . (first run: ~2-3 minutes, torch is large)"
    .venv/bin/python -m pip install -q -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps -e .
  else
    echo "[setup] pip install -e .[test] (no lock; first run: ~2-3 minutes, torch is large)"
    .venv/bin/python -m pip install -q -e '.[test]'
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
