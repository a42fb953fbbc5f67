#!/usr/bin/env bash
# Install what the browser tests (tests/test_app_browser.py) need: Debian's Chromium at
# /usr/bin/chromium and the Playwright Python package. Playwright's own browser download
# (`playwright install`) is deliberately not used: the tests drive the system Chromium.
#
# usage: .ci/install-browser.sh [PYTHON]   (PYTHON: a venv's python or a venv dir; default: python3 on PATH)
set -euo pipefail

PY="${1:-python3}"
if [ -d "$PY" ]; then PY="$PY/bin/python"; fi

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
else
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
    test -x /usr/bin/chromium || { echo "error: apt installed chromium but /usr/bin/chromium is missing" >&2; exit 1; }
fi

# The napari plugin tests (tests/test_napari_*.py) need an X display with OpenGL (Qt's offscreen
# platform has none): Xvfb + Mesa, and the xcb libraries Qt's X11 platform plugin loads.
if [ -x /usr/bin/Xvfb ] && ldconfig -p | grep -q libxcb-cursor.so.0 && ldconfig -p | grep -q libGL.so.1; then
    echo "Xvfb already installed"
else
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 \
        libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
        libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libdbus-1-3 libfontconfig1
fi

if "$PY" -c "import playwright.sync_api" 2>/dev/null; then
    echo "playwright (python) already installed for $PY"
else
    "$PY" -m pip install "playwright>=1.40"
fi
"$PY" -c "import playwright.sync_api; print('playwright ok')"
