#!/usr/bin/env bash
# Prepares what a run on the lent GPU machine needs and cannot fetch there (it has torch, lightning and
# torchmetrics, but no internet, no jsonargparse and no datasets): wheels in .whl/ and Omniglot in .devdata/.
# Both folders are git-ignored; name them in the device tool's `carry`. Then, on the device:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   FSL_DATA_ROOT=$PWD/.devdata python3 benchmarks/protonet_omniglot.py throughput
set -euo pipefail
cd "$(dirname "$0")/.."
source_root=${FSL_DATA_ROOT:-../shared/data}
mkdir -p .devdata/omniglot .whl
cp "$source_root"/omniglot/images_background.zip "$source_root"/omniglot/images_evaluation.zip .devdata/omniglot/
cp -r "$source_root"/omniglot/vinyals_splits .devdata/omniglot/
# pure-Python wheels, so any platform tag works
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "jsonargparse[signatures]" docstring-parser typeshed-client
du -sh .devdata .whl
