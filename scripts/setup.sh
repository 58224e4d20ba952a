#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: the Fashion-MNIST data set (Debian package), a venv in
# .venv with the pinned PyTorch, and lipzoo with its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${LIPZOO_DATA:-}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  echo "setup: installing the Debian package dataset-fashion-mnist" >&2
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "setup: WARNING could not install dataset-fashion-mnist; tests on real data will be skipped" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready (.venv/bin/lipzoo, .venv/bin/python -m pytest)" >&2
