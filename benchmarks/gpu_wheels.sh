#!/usr/bin/env bash
# The wheels a GPU lease's machine lacks (it has torch, numpy, pandas, scipy, h5py, matplotlib, jinja2, safetensors,
# tabulate, timm, huggingface-hub: not open_clip and its text cleaners, torchattacks, jsonschema), for Python 3.12,
# at the versions of constraints.txt, into .whl/ (ignored by git; carried with `carry: [".whl"]`). About 3 MB.
# Then, on the machine: see benchmarks/gpu_checks.py and the README's "Performance" section.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" constraints.txt | head -1; }
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    "$(pin open_clip_torch)" "$(pin torchattacks)" "$(pin jsonschema)" \
    ftfy==6.3.1 wcwidth==0.9.5 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
ls -1 .whl
