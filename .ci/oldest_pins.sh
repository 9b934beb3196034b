#!/usr/bin/env bash
# Install Likeness against the oldest pins we support and run the loading tests there.
#
#   .ci/oldest_pins.sh [VENV] [TEST_FILE ...]
#
# VENV (default .venv-oldest, relative to the repository root) is created afresh. The oldest
# supported numpy and Pillow are what A1111 1.10 ships (numpy 1.26.2) and our own lower bound
# (Pillow 9.5); opencv-python must then be <= 4.11 because 4.12+ requires numpy 2; insightface
# 0.7.3 (built from its sdist) is what A1111 face extensions such as ReActor still carry;
# matplotlib 3.7, rich 13 and scipy 1.11 are pyproject's lower bounds (tested here, not merely declared). Those are
# pinned through a constraints file so that `pip install -e .` cannot lift them; everything
# else resolves to the newest release compatible with them. torch is not installed: the hosts own
# it and the core must not need it (so the test tools are installed by name, not through the
# `test` extra, which pulls the training stack and with it torch). Then pytest runs tests/test_loading.py plus any TEST_FILEs.
# PYTHON picks the interpreter for the venv (default python3; the project supports 3.10-3.12).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${1:-.venv-oldest}"
shift || true
python="${PYTHON:-python3}"
start=$SECONDS

"$python" -m venv --clear "$venv"
py="$venv/bin/python"
[ -x "$py" ] || py="$venv/Scripts/python.exe"  # Windows layout

constraints="$venv/oldest-constraints.txt"
cat > "$constraints" <<'EOF'
numpy==1.26.2
Pillow==9.5.0
opencv-python==4.11.0.86
insightface==0.7.3
matplotlib==3.7.5
rich==13.0.0
scipy==1.11.4
EOF

pip_install() { "$py" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"; }
pip_install numpy==1.26.2 Pillow==9.5.0 opencv-python==4.11.0.86 insightface==0.7.3 matplotlib==3.7.5 rich==13.0.0 scipy==1.11.4
# What a host user runs: install.py adds what is missing (insightface 0.7.3 brings no
# onnxruntime) without moving the pins above.
"$py" install.py
pip_install -e . "pytest>=7.4" "jsonschema>=4.17" "safetensors>=0.4"

"$py" .ci/versions.py "oldest pins, $venv"
echo "== install took $((SECONDS - start)) s"

# The dependencies themselves must import on these pins (a wheel built against numpy 2 fails here
# with "numpy.dtype size changed" or "_ARRAY_API not found"), and pip must see no conflict.
"$py" -m pip check --disable-pip-version-check
MPLBACKEND=Agg "$py" -c "
import numpy, PIL.Image, cv2, onnxruntime, matplotlib.pyplot, rich, insightface, scipy.optimize
from insightface.app import FaceAnalysis
print('== dependencies import: numpy', numpy.__version__, '| cv2', cv2.__version__,
      '| onnxruntime', onnxruntime.__version__, '| insightface', insightface.__version__)
"

status=0
"$py" -m pytest -q tests/test_loading.py "$@" || status=$?
echo "== oldest pins: done in $((SECONDS - start)) s"
exit $status
