# Sourced by scripts/setup.sh and scripts/test.sh (needs ROOT and PY set): the second test host.
# Upstream ComfyUI 0.12.1 as a source tarball beside the checkout (CI has ../shared/hosts/; a fresh clone elsewhere
# does not, and then both scripts say so and go on). ADAPTBIR_SECOND_HOST_TARBALL points elsewhere (or at nothing).
# Its requirements that the venv lacks or has in another version (its frontend, templates, comfy-kitchen,
# comfy-aimdo) go into a folder of their own, put first on PYTHONPATH for its test run only, so the venv and the
# 0.3.75 host keep theirs; torch and torchvision are pinned to the venv's and never replaced.
SECOND_HOST_VERSION="0.12.1"
SECOND_HOST_TARBALL="${ADAPTBIR_SECOND_HOST_TARBALL-$(dirname "$ROOT")/shared/hosts/comfyui-$SECOND_HOST_VERSION.tar.gz}"
SECOND_HOST_DIR="$ROOT/.cache/comfyui-$SECOND_HOST_VERSION"
SECOND_HOST_SITE="$ROOT/.cache/comfyui-$SECOND_HOST_VERSION-site"
SECOND_HOST_SKIPPED="skipped: no second host (../shared/hosts/comfyui-$SECOND_HOST_VERSION.tar.gz not found)"

second_host_present() { [ -n "$SECOND_HOST_TARBALL" ] && [ -f "$SECOND_HOST_TARBALL" ]; }

second_host_stamp() {
  { sha256sum "$SECOND_HOST_TARBALL" | cut -c1-64; sha256sum "$ROOT/scripts/hosts.sh" | cut -c1-64;
    "$PY" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"; } | sha256sum | cut -c1-16
}

second_host_ready() { [ -f "$SECOND_HOST_DIR/.adaptbir-host" ] && [ "$(cat "$SECOND_HOST_DIR/.adaptbir-host")" = "$(second_host_stamp)" ]; }

setup_second_host() {
  if ! second_host_present; then
    echo "[setup] no second test host to install (../shared/hosts/comfyui-$SECOND_HOST_VERSION.tar.gz not found)"
    return 0
  fi
  if second_host_ready; then
    echo "[setup] second test host ready: ComfyUI $SECOND_HOST_VERSION at $SECOND_HOST_DIR"
    return 0
  fi
  local t0 tmp cons req report
  t0=$(date +%s)
  echo "[setup] unpacking ComfyUI $SECOND_HOST_VERSION from $SECOND_HOST_TARBALL into $SECOND_HOST_DIR"
  tmp="$(mktemp -d)"
  tar -xzf "$SECOND_HOST_TARBALL" -C "$tmp"
  rm -rf "$SECOND_HOST_DIR" "$SECOND_HOST_SITE"
  mkdir -p "$(dirname "$SECOND_HOST_DIR")"
  mv "$tmp/ComfyUI" "$SECOND_HOST_DIR"
  cons="$tmp/constraints.txt"; req="$tmp/requirements.txt"; report="$tmp/report.json"
  "$PY" -c "import torch, torchvision; print('torch==' + torch.__version__.split('+')[0]); print('torchvision==' + torchvision.__version__.split('+')[0])" >"$cons"
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$SECOND_HOST_DIR/requirements.txt" >"$req"
  # What the venv lacks for this host, resolved against the venv's torch; installed without their dependencies
  # (the venv has those) into the host's own folder.
  "$PY" -m pip --disable-pip-version-check install -q --dry-run --report "$report" -c "$cons" -r "$req" 2> >(grep -v "is ignored: it is neither" >&2)
  "$PY" - "$report" >"$tmp/pins.txt" <<'PYEOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if name.lower() in ("torch", "torchvision", "torchaudio"):
        sys.exit(f"[setup] ERROR: ComfyUI's requirements want {name} {version}, which would replace the venv's")
    print(f"{name}=={version}")
PYEOF
  if [ -s "$tmp/pins.txt" ]; then
    echo "[setup] installing into $SECOND_HOST_SITE: $(tr '\n' ' ' <"$tmp/pins.txt")"
    "$PY" -m pip --disable-pip-version-check install -q --no-deps --target "$SECOND_HOST_SITE" -r "$tmp/pins.txt" 2> >(grep -v "is ignored: it is neither" >&2)
  else
    mkdir -p "$SECOND_HOST_SITE"
  fi
  PYTHONPATH="$SECOND_HOST_SITE" "$PY" -c "import comfyui_frontend_package"
  rm -rf "$tmp"
  second_host_stamp >"$SECOND_HOST_DIR/.adaptbir-host"
  echo "[setup] second test host ready: ComfyUI $SECOND_HOST_VERSION at $SECOND_HOST_DIR ($(( $(date +%s) - t0 )) s)"
}
