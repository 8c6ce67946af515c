#!/usr/bin/env bash
# The serving install, built from scratch: a fresh venv WITHOUT the system's site-packages (so no torch can leak
# in), the project's wheel with only its [cpu,serve] extras, then .ci/serving_check.py against a repository that
# the full install exported. deploy/Dockerfile runs the same install steps.
#
#   .ci/serving_env.sh WHEEL REPOSITORY ENTRY IMAGE [OUT.json]
set -euo pipefail
wheel=$1 repo=$2 entry=$3 image=$4 out=${5:-}
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(mktemp -d)/serve-venv"
python -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel[cpu,serve]" > "$venv.pip.log" 2>&1 || { cat "$venv.pip.log" >&2; exit 1; }
if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "serving venv: torch is importable, the serving install must not bring it" >&2; exit 1
fi
size=$(du -sm "$venv" | cut -f1)
echo "serving venv: $size MiB ($venv), no torch"
env -u PYTHONPATH "$venv/bin/python" "$root/.ci/serving_check.py" "$repo" "$entry" "$image" ${out:+--json "$out"}
# without onnxruntime, sdzoo serve says what to install, in one line
"$venv/bin/python" -m pip uninstall -q -y onnxruntime
set +e
msg=$(env -u PYTHONPATH "$venv/bin/sdzoo" serve "$repo" 2>&1); rc=$?
set -e
if [ "$rc" -ne 2 ] || ! grep -q "pip install 'sdzoo\[cpu\]'" <<< "$msg" || grep -q Traceback <<< "$msg"; then
    echo "serving venv without onnxruntime: expected a one-line error naming sdzoo[cpu], got (exit $rc): $msg" >&2
    exit 1
fi
echo "without onnxruntime: $msg"
if [ -n "$out" ]; then
    "$venv/bin/python" - "$out" "$size" <<'PY'
import json, sys
path, size = sys.argv[1], int(sys.argv[2])
record = json.load(open(path)); record['venv_mib'] = size
json.dump(record, open(path, 'w'), indent=2)
PY
fi
rm -rf "$(dirname "$venv")"
