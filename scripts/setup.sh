#!/usr/bin/env bash
# Create .venv and install costream with its test tools. Idempotent: a second run is fast.
#
# Which PyTorch build (only when .venv has no torch yet), chosen by COSTREAM_TORCH:
#   auto (default)  cpu on a machine without an NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia),
#                   cuda on one with a GPU
#   cpu             the CPU build from PyTorch's CPU wheel index (a few hundred MB instead of several GB);
#                   when that index is unreachable, whatever pip finds for the pinned version
#   cuda            the default build from the package index (CUDA on Linux x86-64)
#   skip            install no torch (bring your own, e.g. a Jetson or ROCm build, before running this)
# COSTREAM_TORCH_VERSION pins the version (default 2.13.0); COSTREAM_TORCH_CPU_INDEX names the CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_CHOICE=${COSTREAM_TORCH:-auto}
TORCH_VERSION=${COSTREAM_TORCH_VERSION:-2.13.0}
CPU_INDEX=${COSTREAM_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

# Prints the torch build that COSTREAM_TORCH selects on this machine: cpu, cuda or skip.
torch_build() {
  case "$TORCH_CHOICE" in
    auto) if command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia/version ]; then echo cuda; else echo cpu; fi ;;
    cpu|cuda|skip) echo "$TORCH_CHOICE" ;;
    *) echo "setup: COSTREAM_TORCH must be auto, cpu, cuda or skip; got '$TORCH_CHOICE'" >&2; return 2 ;;
  esac
}

install_torch() {
  local build
  build=$(torch_build) || exit 2
  echo "setup: no torch in .venv; installing the $build build of torch ${TORCH_VERSION}" \
       "(COSTREAM_TORCH=${TORCH_CHOICE}; set it to cpu, cuda or skip to choose)"
  case "$build" in
    cpu)
      # Short timeout, no retries: on networks that reach only PyPI this fails in seconds.
      if ! python -m pip install -q --timeout 5 --retries 0 --index-url "$CPU_INDEX" "torch==${TORCH_VERSION}" \
           2>/dev/null; then
        echo "setup: PyTorch's CPU index ($CPU_INDEX) is unreachable; installing torch==${TORCH_VERSION} from" \
             "the default index (on Linux x86-64 that can be the large CUDA build)"
        python -m pip install -q "torch==${TORCH_VERSION}"
      fi
      ;;
    cuda) python -m pip install -q "torch==${TORCH_VERSION}" ;;
    skip) echo "setup: not installing torch; install one into .venv yourself" ;;
  esac
}

if [ "${1:-}" = "--print-torch-build" ]; then
  torch_build
  exit $?
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null

if ! python -c "import torch" >/dev/null 2>&1; then
  install_torch "$TORCH_CHOICE"
fi
python -m pip install -q -e ".[dev,ray]"  # ray: the Ray executor and its tests (`make test` runs them as their own step)
# PyTorchVideo is only the oracle that tests check X3D against. Its x3d module needs none of its
# declared dependencies beyond these, and pulling torchvision would replace the pinned torch build.
if [ "${COSTREAM_SKIP_PYTORCHVIDEO:-0}" != "1" ] && ! python -c "import pytorchvideo" >/dev/null 2>&1; then
  python -m pip install -q --no-deps pytorchvideo==0.1.5 fvcore==0.1.5.post20221221 iopath==0.1.10 \
    portalocker==3.1.1 termcolor==3.3.0 tabulate==0.10.0 tqdm==4.70.1
fi
