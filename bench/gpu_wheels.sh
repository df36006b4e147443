#!/usr/bin/env bash
# The wheels a lent GPU machine lacks, for `bench/gpu_check.sh DIR` (it has Python 3.12, torch and
# transformers 5.17, but no DeepSpeed and no network): run here, where the registries are reachable.
#   bash bench/gpu_wheels.sh DIR        (about 20 MB; DIR must not be tracked by git: carry it)
# transformers 5.19.0 (what the project pins), DeepSpeed 0.19.8 (an sdist on PyPI: its pure-Python
# wheel is built here, no ops compiled) and what DeepSpeed imports that the image lacks.
set -euo pipefail
DIR=${1:?usage: bash bench/gpu_wheels.sh DIR}
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
mkdir -p "$DIR"
TARGET=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q "${TARGET[@]}" -d "$DIR" \
    transformers==5.19.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 hjson==3.1.0 einops==0.8.2 py-cpuinfo==9.0.0 msgpack==1.2.4
SRC=$(mktemp -d)
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$SRC" deepspeed==0.19.8
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$SRC"/deepspeed-0.19.8.tar.gz
rm -rf "$SRC"
ls -la "$DIR"
