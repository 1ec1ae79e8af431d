#!/usr/bin/env bash
# Build honed's wheel (python -m build) and install it in a fresh venv with the pinned CPU torch and the
# given extras (tools/install_extra.py adds their --no-deps packages), then run `honed list` there.
#   tools/wheel_check.sh                 # the wheel alone
#   tools/wheel_check.sh mpc             # the wheel with one extra (or several: mpc text)
# PYTHON builds the wheel (default .venv/bin/python, which has `build` from the dev extra);
# WORK is the scratch folder (default: a new temporary one, removed at the end).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
work=${WORK:-$(mktemp -d)}
[ -n "${WORK:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
start=$(date +%s)
"$python" -m build --wheel --no-isolation --outdir "$work/dist" "$root" >"$work/build.log"
wheel=$(ls "$work"/dist/honed-*.whl)
echo "built $(basename "$wheel") in $(( $(date +%s) - start )) s"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" numpy torch==2.13.0
"$work/venv/bin/python" "$root/tools/install_extra.py" --target "$wheel" "$@"
cd "$work" && COLUMNS=200 "$work/venv/bin/honed" --out "$work/runs" list | tail -n 3
echo "wheel installed with extras [${*:-none}] and honed list ran, $(( $(date +%s) - start )) s in all"
