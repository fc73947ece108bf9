#!/usr/bin/env bash
# Open a trial's report page in headless Chromium; fail on a blank page, an image that does not load, or a mesh
# view that did not draw.
#
#   bash scripts/check_report.sh TRIAL/save/report.html [SCREENSHOT.png]
#
# Needs Debian's chromium package (apt-get install -y chromium). Writes the screenshot (default: next to the
# report, report.png) so you can look at it. Exit 0: the page rendered and every image loaded; 1: it did not;
# 2: bad arguments or no Chromium.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1" ]; then echo "error: usage: $0 REPORT.html [SCREENSHOT.png] (report not found)" >&2; exit 2; fi
REPORT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
SHOT="${2:-${REPORT%.html}.png}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [ -z "$CHROMIUM" ]; then echo "error: Chromium not found; install it with: apt-get install -y chromium" >&2; exit 2; fi

PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
# WebGL (the mesh view) on the CPU: SwiftShader, which headless Chromium only uses when asked
FLAGS=(--headless --no-sandbox --disable-gpu --use-angle=swiftshader --enable-unsafe-swiftshader
       --disable-background-networking --disable-component-update
       --no-first-run --user-data-dir="$PROFILE" --hide-scrollbars --virtual-time-budget=5000)

# the DOM after load: a report image that failed to load sets <body data-broken="1"> (its onerror attribute)
"$CHROMIUM" "${FLAGS[@]}" --dump-dom "file://$REPORT" >"$PROFILE/dom.html" 2>/dev/null
"$CHROMIUM" "${FLAGS[@]}" --window-size=1300,2200 --screenshot="$SHOT" "file://$REPORT" >/dev/null 2>&1

python - "$SHOT" "$PROFILE/dom.html" <<'PY'
import sys

import numpy as np
from PIL import Image

shot = sys.argv[1]
with open(sys.argv[2], encoding="utf-8", errors="replace") as f:
    dom = f.read()
problems = []
if "<body" not in dom:
    problems.append("Chromium returned no DOM")
if 'data-broken="1"' in dom:
    problems.append(str(dom.count('<b class="missing">')) + " image(s) failed to load")
if 'id="mesh-canvas"' in dom and 'data-drawn="1"' not in dom:
    problems.append("the mesh view did not draw" + (" (" + dom.split('data-error="')[1].split('"')[0] + ")"
                                                    if 'data-error="' in dom else ""))
img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
inked = float((img < 200).mean())  # share of pixels that are not (near) white
if img.std() < 5 or inked < 0.01:
    problems.append(f"the page looks blank (std {img.std():.1f}, {inked:.1%} non-white pixels)")
if problems:
    print("report check FAILED: " + "; ".join(problems) + f" (screenshot {shot})")
    sys.exit(1)
mesh = ", the mesh view drew" if 'id="mesh-canvas"' in dom else ""
print(f"report check ok: {shot} ({img.shape[1]}x{img.shape[0]}, {inked:.1%} non-white pixels, every image loaded{mesh})")
PY
