#!/usr/bin/env bash
# Set up .venv and run the main job: line2product on the shipped example line drawing through a
# real ComfyUI (yours via COMFYUI_PATH, else the pinned runtime). Downloads the real models when
# it can; offline it runs the same workflow on generated tiny models as a plumbing check.
# Extra arguments go to `atelier demo` (see `atelier demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/atelier demo "$@"
