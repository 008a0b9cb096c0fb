#!/usr/bin/env bash
# Wheels of the dependencies that a GPU host's image lacks, into .whl/ (git-ignored), for benchmarks/gpu.sh.
# The image we measured on has Python 3.12 with jax[cuda13] 0.11.2, flax, optax, orbax-checkpoint,
# numpy, pillow, absl-py, etils, protobuf, pyarrow, requests, wrapt, psutil, tqdm, matplotlib, safetensors, pytest
# and pytest-xdist, and reaches no package registry. Run here (it reaches PyPI); the wheels (~11 MB) are copied to
# the GPU host with the repository. Versions are requirements.txt's.
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir .whl
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl \
  grain==0.2.18 portpicker tensorflow-datasets==4.9.10 array-record==0.8.6 dm-tree==0.1.10 immutabledict \
  simple_parsing docstring-parser tensorflow-metadata googleapis-common-protos termcolor toml ml-collections==1.1.0 \
  tensorboardX==2.6.5 importlib_resources==7.1.0 simplejpeg==1.9.0
# promise (tensorflow-datasets needs it) is published as source only: build its pure-Python wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl promise==2.3
du -sh .whl
