#!/usr/bin/env bash
# Create .venv and install costream with its test tools. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# Pin the CPU build of torch when none is installed: an unpinned `torch` pulls a multi-GB CUDA build.
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==${COSTREAM_TORCH_VERSION:-2.13.0}"
fi
python -m pip install -q -e ".[dev]"
