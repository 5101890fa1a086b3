"""Peak memory of ``predict`` on a folder of normal images and on the same folder with decompression bombs in it.

    python benchmarks/predict_memory.py [--checkpoint <file.ckpt>] [--way 5] [--queries 1]

Writes a ``--way``-way one-shot support folder and a query folder of ``--way`` x ``--queries`` real Omniglot
evaluation characters (``$FSL_DATA_ROOT/omniglot/images_evaluation.zip``), then a copy of the query folder with,
added: the 20000 x 20000 PNG of the issue that asked for this (400 megapixels in about 50 KB: over PIL's own
limit), a 9000 x 9000 PNG (81 megapixels: under PIL's limit, over this project's 64) and a 12000 x 9000 JPEG
(108 megapixels: decoded at a quarter of its size). It runs ``python -m fsl_lightning predict`` once on each
folder, each in a fresh process, and reports the peak resident memory of each (``ru_maxrss`` from ``wait4``),
the ratio, and how many queries each scored and skipped. Without ``--checkpoint`` a ProtoNet is first trained
for 20 steps (memory does not depend on its weights).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests")]
from bad_images import decompression_bomb, write_png  # noqa: E402  (the tests' writers of awkward files)
from fsl_lightning.run.cpu_features import this_cpu  # noqa: E402
from predict_many import train_briefly, write_folder_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint of `fit` (default: train ProtoNet briefly)")
    parser.add_argument("--way", type=int, default=5, help="classes in the support folder")
    parser.add_argument("--queries", type=int, default=1, help="normal query images per class")
    args = parser.parse_args()
    data_root = Path(os.environ.get("FSL_DATA_ROOT", REPO.parent / "shared" / "data"))
    print(f"CPU: {this_cpu().description()}")
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        config = REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml"
        checkpoint = args.checkpoint or train_briefly(config, work / "fit", data_root)
        ((support, normal),) = write_folder_pairs(
            data_root / "omniglot" / "images_evaluation.zip", work, 1, args.way, args.queries
        )
        bombs = work / "with_bombs"
        shutil.copytree(normal, bombs)
        add_bombs(bombs)
        env = {**os.environ, "PYTHONPATH": str(REPO), "FSL_DATA_ROOT": str(work / "no_data")}
        results = {
            name: predict(checkpoint, support, folder, work / f"{name}.csv", env)
            for name, folder in (("normal", normal), ("with_bombs", bombs))
        }
    for name, (peak, scored, skipped) in results.items():
        print(f"  {name:10s}: peak RSS {peak / 2**20:7.1f} MiB, {scored} queries scored, {skipped} skipped")
    print(f"  ratio with_bombs / normal: {results['with_bombs'][0] / results['normal'][0]:.2f}x")


def add_bombs(folder: Path) -> None:
    decompression_bomb(folder / "bomb_400mpx.png")
    side = 9000
    write_png(folder / "large_81mpx.png", side, side, 1, 0, (bytes(side // 8 + 1) for _ in range(side)))
    Image.new("L", (12000, 9000), 255).save(folder / "photo_108mpx.jpg", quality=90)


def predict(checkpoint: Path, support: Path, queries: Path, output: Path, env: dict) -> tuple[int, int, int]:
    """Peak RSS in bytes of one ``predict`` process, and the queries it scored and skipped."""
    command = [
        sys.executable,
        "-m",
        "fsl_lightning",
        "predict",
        "--ckpt_path",
        str(checkpoint),
        f"--data.predict_support_dir={support}",
        f"--data.predict_query_dir={queries}",
        f"--prediction_writer.output_path={output}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: wait4 must not wait on a full pipe
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status):
            log.seek(0)
            raise SystemExit(f"predict failed:\n{log.read().decode()[-3000:]}")
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    skipped = sum(bool(row["error"]) for row in rows)
    return usage.ru_maxrss * 1024, len(rows) - skipped, skipped  # ru_maxrss is in KiB on Linux


if __name__ == "__main__":
    main()
