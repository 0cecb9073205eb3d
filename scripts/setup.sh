#!/usr/bin/env bash
# Install everything MobileDL needs on a fresh Debian/Ubuntu machine. Idempotent: a second
# run checks and returns in seconds. Root runs apt-get directly; others go through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-user-static qemu-user            # the emulated arm64 phone (static: run; dynamic: plugins)
  g++                                   # the native runtime for this machine (deploy/native)
  gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu  # cross-linking, objdump
  debootstrap                           # the arm64 sysroot
  dataset-fashion-mnist                 # real training/test images
  opencv-doc fortunes-zh                # apps/: style + photos, Tang poems (training data)
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
# torch==2.13.0 is pinned in the extras: an unpinned torch pulls a multi-GB CUDA build.
# (checked from / so that the repo folder on sys.path cannot hide a stale editable install)
if ! (cd / && "$PY" -c "import importlib.metadata as m; m.version('mdl-tvm')
import torch, onnx, onnxruntime, tvm, sklearn, xgboost, tornado, matplotlib, ncnn, pnnx
import apps, PIL, skimage, opencc, importlinter, hypothesis") \
    >/dev/null 2>&1 || [ "${MDL_TVM_REINSTALL:-0}" = 1 ]; then
  echo "setup: pip install -e .[all]"
  "$PY" -m pip install -q --disable-pip-version-check -e ".[all]"
fi

# MobileDL's parallel launcher for host libraries (mdl_tvm/core/parallel.py), built once
MDL_TVM_PARALLEL=mdl "$PY" -c "from mdl_tvm.core import parallel; assert parallel.launcher() is not None" \
  || { echo "setup: the parallel launcher did not build (g++?)" >&2; exit 1; }

# The emulated arm64 phone: sysroot + device runtime, and the native runtime (mdl_run,
# libmdl_runtime.so) for this machine and the phone, cached in ~/.cache/mdl_tvm.
if [ "${MDL_TVM_SKIP_DEVICE:-0}" != 1 ] && "$PY" -c "import deploy.device" >/dev/null 2>&1; then
  "$PY" -m mdl_tvm device setup --peers   # the phone + ONNX Runtime, NCNN, MNN, LiteRT for it
fi
echo "setup: done"
