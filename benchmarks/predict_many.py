"""Scoring many support/query folder pairs: one ``predict`` command per pair, or one Python process (the API).

    python benchmarks/predict_many.py [--pairs 5] [--way 20] [--queries 5] [--batch-size 256]
                                      [--config experiments/omniglot/protonet_5w1s.yaml] [--checkpoint <file.ckpt>]

Writes ``--pairs`` folder pairs from real Omniglot (``$FSL_DATA_ROOT/omniglot/images_evaluation.zip``): pair ``i``
is a ``--way``-way one-shot task over the first characters of evaluation alphabet ``i`` (drawer 01 the support
image, the next ``--queries`` drawers the queries). Then, in the same run (the machine may be busy: compare the two
within one run only), it times, wall clock, each from a fresh interpreter:

* ``cli``: ``python -m fsl_lightning predict --ckpt_path ...`` once per pair;
* ``api``: one ``python`` process that loads ``FewShotClassifier.from_checkpoint`` once and calls ``fit_support``
  and ``predict_to_csv`` per pair; the seconds spent in those calls (fitting and scoring, without start-up and model
  load) are reported too.

Both score ``--batch-size`` queries per step (``data.predict_batch_size``), run on the CPU with an empty
``FSL_DATA_ROOT`` (only the checkpoint and the folders) and must write the same CSV files. Without ``--checkpoint``,
the method of ``--config`` (an Omniglot config; default ProtoNet) is first trained for 20 steps at 28x28 (not
timed): the timings hardly depend on its weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_SCRIPT = """
import sys, time
from fsl_lightning.classifier import FewShotClassifier
classifier = FewShotClassifier.from_checkpoint(sys.argv[1], batch_size=int(sys.argv[2]))
start = time.perf_counter()
for support, queries, output in zip(*[iter(sys.argv[3:])] * 3):
    classifier.fit_support(support).predict_to_csv(queries, output)
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="support/query folder pairs to score")
    parser.add_argument("--way", type=int, default=20, help="classes (characters) per support folder")
    parser.add_argument("--queries", type=int, default=5, help="query images per class")
    parser.add_argument("--batch-size", type=int, default=256, help="query images per predict step")
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml",
        help="the Omniglot config whose method is trained for 20 steps when --checkpoint is not given",
    )
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint of `fit` (default: train --config briefly)")
    args = parser.parse_args()
    data_root = Path(os.environ.get("FSL_DATA_ROOT", REPO.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        checkpoint = args.checkpoint or train_briefly(args.config, work / "fit", data_root)
        pairs = write_folder_pairs(
            data_root / "omniglot" / "images_evaluation.zip", work, args.pairs, args.way, args.queries
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "FSL_DATA_ROOT": str(work / "no_data"), "OMP_NUM_THREADS": "1"}
        run([sys.executable, "-c", "import fsl_lightning.cli, fsl_lightning.classifier"], env)  # files in the OS cache
        cli_seconds = timed(
            lambda: [
                run_cli(checkpoint, support, queries, work / f"cli_{i}.csv", args.batch_size, env)
                for i, (support, queries) in enumerate(pairs)
            ]
        )
        outputs = [str(part) for i, pair in enumerate(pairs) for part in (*pair, work / f"api_{i}.csv")]
        command = [sys.executable, "-c", API_SCRIPT, str(checkpoint), str(args.batch_size), *outputs]
        start = time.perf_counter()
        scoring_seconds = float(run(command, env).split()[-1])
        api_seconds = time.perf_counter() - start
        for i in range(len(pairs)):
            if (work / f"cli_{i}.csv").read_text() != (work / f"api_{i}.csv").read_text():
                raise SystemExit(f"pair {i}: the API's CSV differs from the CLI's")
    queries = args.way * args.queries
    print(
        f"{args.pairs} pairs of {args.way}-way one-shot support and {queries} queries, {args.batch_size} per step, "
        f"{args.config.stem if not args.checkpoint else args.checkpoint}, CPU, same CSVs from both:"
    )
    print(f"  {args.pairs} CLI predict calls : {cli_seconds:7.1f} s ({cli_seconds / args.pairs:.1f} s per pair)")
    per_pair = api_seconds / args.pairs
    print(f"  one API process     : {api_seconds:7.1f} s ({per_pair:.1f} s per pair, start-up included)")
    print(f"  ratio CLI / API     : {cli_seconds / api_seconds:7.1f}x")
    print(
        f"  API fit_support + predict_to_csv calls alone: {scoring_seconds:7.2f} s "
        f"({scoring_seconds / args.pairs:.2f} s per pair)"
    )


def train_briefly(config: Path, out: Path, data_root: Path) -> Path:
    run(
        [
            sys.executable,
            "-m",
            "fsl_lightning",
            "fit",
            "--config",
            str(config),
            "--data.train.way=5",
            "--data.train_episodes_per_epoch=20",
            "--data.val_episodes=2",
            "--trainer.max_steps=20",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={out}",
        ],
        {**os.environ, "PYTHONPATH": str(REPO), "FSL_DATA_ROOT": str(data_root)},
    )
    return next(out.rglob("last.ckpt"))


def write_folder_pairs(archive: Path, root: Path, pairs: int, way: int, queries: int) -> list[tuple[Path, Path]]:
    """Pair ``i``: ``support_i/<character>/`` (one image each) and ``queries_i/`` from evaluation alphabet ``i``."""
    written = []
    with zipfile.ZipFile(archive) as opened:
        pngs = sorted(name for name in opened.namelist() if name.endswith(".png"))
        alphabets = sorted({name.split("/")[1] for name in pngs})
        if pairs > len(alphabets):
            raise SystemExit(f"--pairs is at most {len(alphabets)} (one evaluation alphabet per pair)")
        for index, alphabet in enumerate(alphabets[:pairs]):
            support, query = root / f"support_{index}", root / f"queries_{index}"
            characters = sorted({name.rsplit("/", 1)[0] for name in pngs if name.split("/")[1] == alphabet})
            for character in characters[:way]:
                drawings = [name for name in pngs if name.startswith(character + "/")]
                name = character.replace("/", "_")
                _write(opened, drawings[0], support / name / "drawer01.png")
                for number, drawing in enumerate(drawings[1 : 1 + queries]):
                    _write(opened, drawing, query / f"{name}_{number}.png")
            written.append((support, query))
    return written


def _write(opened: zipfile.ZipFile, member: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(opened.read(member))


def run_cli(checkpoint: Path, support: Path, queries: Path, output: Path, batch_size: int, env: dict) -> None:
    run(
        [
            sys.executable,
            "-m",
            "fsl_lightning",
            "predict",
            "--ckpt_path",
            str(checkpoint),
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            f"--data.predict_batch_size={batch_size}",
            f"--prediction_writer.output_path={output}",
            "--trainer.logger=false",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
        ],
        env,
    )


def run(command: list[str], env: dict) -> str:
    """Runs the command; its standard output."""
    finished = subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True)
    if finished.returncode:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{finished.stderr[-3000:]}")
    return finished.stdout


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
