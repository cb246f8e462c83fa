#!/usr/bin/env bash
# Creates .venv in the repository root and installs mpcgen with everything it needs, from PyPI only.
# Idempotent: a second run only checks. Usage: scripts/setup.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=.venv/.mpcgen-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# crypten 0.4.1 declares scikit-learn and torchvision; neither installs here and neither is needed.
.venv/bin/python -m pip install -q --no-deps crypten==0.4.1
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
