#!/usr/bin/env bash
# Fill the ignored .whl/ with what the GPU machine's image (python 3.12, x86_64, no internet) lacks:
#   .whl/*.whl       of requirements.txt (benchmarks/requirements-gpu.txt), installed by gpu_check.sh into .site
#   .whl/peer/*.whl  the peer's environment (benchmarks/requirements-peer.txt), for bench_e2e.py --peer-wheels
# Carry .whl to the GPU machine with the working tree (about 25 MB). `make gpu-wheels` runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TARGET=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
mkdir -p .whl/peer
"$PY" -m pip download -q "${TARGET[@]}" -d .whl -r <(grep -v -e '^#' -e '^deepspeed' benchmarks/requirements-gpu.txt)
# DeepSpeed ships a source archive only: build its pure-Python wheel here (its ops compile on first use there).
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$(grep '^deepspeed==' benchmarks/requirements-gpu.txt)"
"$PY" -m pip download -q "${TARGET[@]}" -d .whl/peer -r benchmarks/requirements-peer.txt
du -sh .whl .whl/peer
