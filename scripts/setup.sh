#!/usr/bin/env bash
# Creates .venv in the repository and installs the project with its test extra (idempotent: re-runs only when
# pyproject.toml changed). Installs Debian's ffmpeg (ffmpeg + ffprobe) when running as root and it is missing;
# without root, the ffmpeg binary from the imageio-ffmpeg wheel is used and ffprobe-based checks are skipped.
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
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] pip install -e .[test] (first run: ~2-3 minutes, torch is large)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
