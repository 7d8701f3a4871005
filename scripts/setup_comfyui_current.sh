#!/usr/bin/env bash
# Sets up a current ComfyUI (0.33 and later) next to the 0.3.75 one of scripts/setup_env.sh,
# offline-safe (PyPI only):
#   $STEP1X_WORK/current/ComfyUI   the ComfyUI source tarball given as the only argument, unpacked
#   $STEP1X_WORK/current/venv      torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements, test tools
# Idempotent: finished steps are skipped; another tarball (by checksum) replaces both. Default STEP1X_WORK
# is <pack>/.work. Progress goes to stderr; the last stdout line is the folder ($STEP1X_WORK/current).
set -euo pipefail
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 ComfyUI-X.Y.Z.tar.xz  (a tarball that unpacks to ComfyUI/)" >&2
  exit 2
fi
TARBALL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=${STEP1X_WORK:-$PACK_DIR/.work}
CURRENT=$WORK/current
# The newest torchaudio on PyPI; its wheel declares torch==2.11.x but imports next to torch 2.14.1,
# so it goes in with --no-deps (ComfyUI's nodes.py imports it through comfy_extras).
TORCHAUDIO_VERSION=2.11.1
mkdir -p "$CURRENT"
cd "$CURRENT"
CHECKSUM=$(sha256sum "$TARBALL" | cut -d' ' -f1)
if [ "$(cat tarball.sha256 2>/dev/null)" != "$CHECKSUM" ]; then
  rm -rf ComfyUI venv tarball.sha256
fi
if [ ! -f ComfyUI/main.py ]; then
  echo "unpacking $TARBALL" >&2
  rm -rf unpack ComfyUI
  mkdir unpack
  tar -xJf "$TARBALL" -C unpack
  if [ ! -f unpack/ComfyUI/main.py ]; then
    echo "$TARBALL does not unpack to ComfyUI/main.py" >&2
    exit 1
  fi
  mv unpack/ComfyUI ComfyUI
  rm -rf unpack
  echo "$CHECKSUM" > tarball.sha256
fi
if [ ! -f venv/.complete ]; then
  rm -rf venv
  echo "creating $CURRENT/venv" >&2
  python3.11 -m venv venv
  venv/bin/pip install -q --upgrade pip >&2
  echo "installing torch, torchvision, torchaudio" >&2
  venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 >&2
  venv/bin/pip install -q --no-deps "torchaudio==$TORCHAUDIO_VERSION" >&2
  echo "installing ComfyUI's requirements and the test tools" >&2
  grep -v -E '^(torch|torchvision|torchaudio)$' ComfyUI/requirements.txt > req-comfyui.txt
  venv/bin/pip install -q -r req-comfyui.txt requests >&2
  venv/bin/pip install -q -r "$PACK_DIR/requirements-test.txt" >&2
  touch venv/.complete
fi
echo "$CURRENT"
