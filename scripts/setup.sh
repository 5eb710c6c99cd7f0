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
python -m pip install -q -e ".[dev,ray]"  # ray: the Ray executor and its tests (`make test` runs them as their own step)
# PyTorchVideo is only the oracle that tests check X3D against. Its x3d module needs none of its
# declared dependencies beyond these, and pulling torchvision would replace the pinned torch build.
if [ "${COSTREAM_SKIP_PYTORCHVIDEO:-0}" != "1" ] && ! python -c "import pytorchvideo" >/dev/null 2>&1; then
  python -m pip install -q --no-deps pytorchvideo==0.1.5 fvcore==0.1.5.post20221221 iopath==0.1.10 \
    portalocker==3.1.1 termcolor==3.3.0 tabulate==0.10.0 tqdm==4.70.1
fi
