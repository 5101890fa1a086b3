#!/usr/bin/env bash
# Prepares what a run on the lent GPU machine needs and cannot fetch there (it has torch, lightning and
# torchmetrics, but no internet, no jsonargparse and no datasets): wheels in .whl/, Omniglot and Caltech-101 in .devdata/.
# Both folders are git-ignored; name them in the device tool's `carry`. Then, on the device:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   FSL_DATA_ROOT=$PWD/.devdata python3 benchmarks/protonet_omniglot.py throughput
set -euo pipefail
cd "$(dirname "$0")/.."
source_root=${FSL_DATA_ROOT:-../shared/data}
mkdir -p .devdata/omniglot .whl
cp "$source_root"/omniglot/images_background.zip "$source_root"/omniglot/images_evaluation.zip .devdata/omniglot/
cp -r "$source_root"/omniglot/vinyals_splits .devdata/omniglot/
# Caltech-101 (126 MB) does not fit the 64 MiB carry: a folder copy at 84x84 (the configs' size), JPEG quality 90
# (about 30 MB), read by the loader like the extracted official folder. GPU results on it say so in BENCHMARKS.md.
python3 - "$source_root/caltech101/101_ObjectCategories.tar.gz" .devdata/caltech101/101_ObjectCategories <<'PY'
import io, sys, tarfile
from pathlib import Path
from PIL import Image
source, target = sys.argv[1], Path(sys.argv[2])
with tarfile.open(source, "r|gz") as stream:
    for member in stream:
        parts = member.name.split("/")
        if member.isfile() and len(parts) == 3 and parts[2].endswith(".jpg") and parts[1] != "BACKGROUND_Google":
            image = Image.open(io.BytesIO(stream.extractfile(member).read())).convert("RGB").resize((84, 84), Image.BILINEAR)
            (target / parts[1]).mkdir(parents=True, exist_ok=True)
            image.save(target / parts[1] / parts[2], quality=90)
PY
# pure-Python wheels, so any platform tag works
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "jsonargparse[signatures]" docstring-parser typeshed-client
# For benchmarks/pretrained_features.py only (open_clip, timm and what they import; regex and safetensors are
# compiled, built for this machine's Python): install them separately on the device, so that a Python mismatch
# there cannot break the line above:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pretrained/*.whl || echo "no CLIP/timm"
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl/pretrained \
    open_clip_torch timm huggingface_hub safetensors ftfy wcwidth regex
du -sh .devdata .whl
