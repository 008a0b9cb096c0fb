#!/usr/bin/env bash
# The GPU list (benchmarks/gpu.py) on a fresh machine: set up Python, then run every item into one folder.
#
#   bash benchmarks/gpu.sh OUT_DIR [flags of benchmarks/gpu.py]      e.g. bash benchmarks/gpu.sh "$OUT"
#   bash benchmarks/gpu.sh /tmp/gpu_smoke --cpu_smoke                  here: the whole list at toy size
#
# Python, in the first way that applies:
#   1. .whl/ holds wheels (a GPU host without a package registry whose image has jax[cuda13], flax, optax, orbax,
#      pillow...): the image's python3, our missing dependencies installed from the copied wheels into /tmp/site.
#      Make .whl/ with `bash benchmarks/gpu_wheels.sh` and copy it to the host with the working tree.
#   2. .venv/bin/python exists: that environment.
#   3. otherwise a new .venv from requirements.txt plus jax's CUDA 12 build (`pip install -e '.[cuda12]'`): a GPU
#      host that reaches PyPI.
# A GPU host may give one command 10 minutes: the list's deadline (--budget_s, default 540 s) leaves the rest
# for this set-up and the copy back.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [benchmarks/gpu.py flags]}
shift
mkdir -p "$OUT_DIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing the carried wheels failed; rebuild .whl with benchmarks/gpu_wheels.sh"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  PY=python3
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  python3 -m venv .venv && .venv/bin/python -m pip install -q -r requirements.txt \
    && .venv/bin/python -m pip install -q --no-deps -e . && .venv/bin/python -m pip install -q -e '.[cuda12]' \
    || { echo "error: creating .venv failed (no package registry? then carry .whl, see the header)"; exit 1; }
  PY=.venv/bin/python
fi
# XLA's compilation cache and the workdirs stay on this machine; nothing is left in the repository copy.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/supersub_gpu_work/jax_cache}
exec "$PY" -m benchmarks.gpu --out="$OUT_DIR" "$@"
