"""The later trained methods next to ProtoNet on the same reduced CPU budget.

    FSL_DATA_ROOT=/path/to/data python benchmarks/new_methods_budget.py [--settings omniglot_5w1s caltech_5w1s ...]
        [--methods protonet metaoptnet_svm dn4 feat meta_baseline] [--minutes M] [--parallel 2] [--out DIR]

For each setting (Omniglot 5-way 1-shot; Caltech-101 split v1 5-way 1-shot and 5-shot) and method, runs
``python -m fsl_lightning fit`` as a user would (a subprocess, the setting's experiment config) with the same
wall-clock training budget for every method of the setting (``--trainer.max_time``): a two-stage method (FEAT:
classifier pre-training then episodic training; Meta-Baseline: Classifier-Baseline then meta-training) gets half of
it for each stage, stage 2 starting from stage 1's ``last.ckpt`` as its config says. The fit's own test of its best
checkpoint (on the validation episodes, 100 by default to keep validation cheap; Lightning validates once more when
the time runs out) then scores the 1000 fixed test episodes. ProtoNet, with the setting's existing config, is the
reference row.

Reduced size, so that the table fits on a 2-core CPU:

* Omniglot: the configs as they are (28x28, Conv4 or DN4's Conv64F), 4 minutes per method.
* Caltech-101: 84x84 (the configs' size) with Conv4 backbones for every method instead of the configs' ResNet12,
  5 minutes per method. The ResNet12 trains at 0.37 (fp32) to 1.57 (bf16, channels-last) steps/s of 16 84x84
  images on one thread (BENCHMARKS.md, CPU precision and kernels): five minutes would buy 1800-7500 images, one
  or two passes over the 5202 base images, and the 1000 test episodes (80000 images at 1 shot) alone would take
  longer than the whole table; a Conv4 at 84x84 costs about 1/35 of its multiply-adds (0.1 G against 3.5 G). The Conv4 is the 64-filter, four-pool one of ProtoNet's paper (a flattened 64x5x5 = 1600-d
  embedding: FEAT's ``feature_dim`` becomes 1600; MetaOptNet's SVM sees the same 1600-d vector). DN4 keeps its
  config's Conv64F (Conv4 with pooling after the first two blocks only), its paper's own backbone: 21x21 = 441
  local descriptors of 64 dimensions per 84x84 image, exactly the descriptors of its miniImageNet setting.
  Everything else (optimisers, schedules, episode shapes, augmentation, CPU precision defaults) is the config's.

Writes ``<out>/new_methods_budget.json`` and ``<out>/new_methods_budget.md`` (the markdown table, also printed),
with each stage's log under ``<out>/logs`` and its run folder under ``<out>/runs``. ``--parallel 2`` runs two
methods at once, each with ``OMP_NUM_THREADS=1``; the machine's load average is sampled every 15 s and recorded,
since wall-clock budgets buy fewer steps on a loaded machine.

Cost beyond the budgets, on the 2-core development machine: an Omniglot row took about 7 minutes (4 of training)
under a load average of 6; with one core per fit (``--parallel 2`` and nothing else running) a Caltech-101 row
took 11-12 minutes at ``--minutes 7`` (the fixed test, 1000 episodes of 80 or 100 Conv4 forward passes at 84x84 in
fp32, most of the rest), DN4's 16 minutes (1-shot) and more (5-shot): its image-to-class test compares every query
descriptor with every support descriptor of each class. Budget the whole table (15 rows) accordingly, or run it a
setting at a time (``--settings``); a wall-clock budget is only fair between rows that ran under the same load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fsl_lightning.run.composed_configs import load_config

REPO = Path(__file__).resolve().parents[1]
TEST_LINE = re.compile(r"Test accuracy: ([\d.]+)% ± ([\d.]+)%")
CONV4_RGB = json.dumps({"class_path": "fsl_lightning.backbones.Conv4", "init_args": {"in_channels": 3}})
METHODS = ("protonet", "metaoptnet_svm", "dn4", "feat", "meta_baseline")
#: stage 2's option naming the stage-1 checkpoint it starts from
STAGE_TWO_CHECKPOINT = {"feat": "backbone_checkpoint", "meta_baseline": "classifier_baseline_checkpoint"}


@dataclass(frozen=True)
class Setting:
    name: str
    folder: str  # under experiments/
    suffix: str  # the configs' setting suffix, e.g. 5w1s
    minutes: float
    conv4_backbones: bool  # replace the configs' ResNet12 by Conv4 (all but DN4, which has its Conv64F)

    def configs(self, method: str) -> list[Path]:
        """The method's configs in the order they run (stage 1 first for a two-stage method)."""
        root = REPO / "experiments" / self.folder
        stages = {
            "protonet": [f"protonet_{self.suffix}"],
            "metaoptnet_svm": [f"metaoptnet_svm_{self.suffix}"],
            "dn4": [f"dn4_{self.suffix}"],
            "feat": ["feat_pretrain", f"feat_{self.suffix}"],
            "meta_baseline": ["meta_baseline_stage1", f"meta_baseline_{self.suffix}"],
        }[method]
        return [root / f"{stage}.yaml" for stage in stages]

    def backbone_overrides(self, method: str) -> list[str]:
        if not self.conv4_backbones or method == "dn4":
            return []
        overrides = [f"--model.init_args.backbone={CONV4_RGB}"]
        return overrides + (["--model.init_args.feature_dim=1600"] if method == "feat" else [])


SETTINGS = {
    setting.name: setting
    for setting in (
        Setting("omniglot_5w1s", "omniglot", "5w1s", 4.0, conv4_backbones=False),
        Setting("caltech_5w1s", "caltech101", "5w1s", 5.0, conv4_backbones=True),
        Setting("caltech_5w5s", "caltech101", "5w5s", 5.0, conv4_backbones=True),
    )
}


@dataclass
class Stage:
    config: str
    seconds_budget: float
    steps: int | None = None
    wall_seconds: float | None = None
    precision: str | None = None
    log: str | None = None


@dataclass
class Row:
    setting: str
    method: str
    minutes: float
    stages: list[Stage] = field(default_factory=list)
    accuracy: float | None = None
    ci95: float | None = None
    wall_seconds: float | None = None
    load_start: float | None = None
    load_end: float | None = None
    error: str | None = None


def max_time(seconds: float) -> str:
    """Lightning's ``DD:HH:MM:SS``."""
    seconds = int(round(seconds))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_stage(
    setting: Setting,
    method: str,
    index: int,
    stage: Stage,
    previous_checkpoint: Path | None,
    is_last: bool,
    out: Path,
    val_episodes: int,
) -> tuple[Path | None, str]:
    """One ``fit`` subprocess; returns its ``last.ckpt`` and its output."""
    run_dir = out / "runs" / setting.name / method / f"stage{index + 1}"
    command = [
        sys.executable,
        "-m",
        "fsl_lightning",
        "fit",
        "--config",
        stage.config,
        f"--trainer.max_time={max_time(stage.seconds_budget)}",
        f"--data.val_episodes={val_episodes}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        *setting.backbone_overrides(method),
    ]
    if previous_checkpoint is not None:
        command.append(f"--model.init_args.{STAGE_TWO_CHECKPOINT[method]}={previous_checkpoint}")
    if not is_last:
        command.append("--test_after_fit=false")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    log = out / "logs" / f"{setting.name}_{method}_stage{index + 1}.log"
    started = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stage.wall_seconds = time.perf_counter() - started
    log.write_text(" ".join(command) + "\n\n" + process.stdout)
    stage.log = str(log.relative_to(out))
    if process.returncode != 0:
        raise RuntimeError(f"exit {process.returncode}, see {log}")
    checkpoints = sorted(run_dir.rglob("last.ckpt"), key=lambda path: path.stat().st_mtime)
    return (checkpoints[-1] if checkpoints else None), process.stdout


def steps_of(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


def training_precision(config: str) -> str:
    """bf16 or fp32: what ``speed.cpu_bf16``'s default gives the config's method on this CPU (training only;
    validation and test are fp32)."""

    from fsl_lightning.run.cpu_features import bf16_training_is_fast, this_cpu

    module, _, name = load_config(config)["model"]["class_path"].rpartition(".")
    method = getattr(importlib.import_module(module), name)
    return "bf16" if getattr(method, "cpu_bf16_by_default", False) and bf16_training_is_fast(this_cpu()) else "fp32"


def run_method(setting: Setting, method: str, minutes: float, out: Path, val_episodes: int) -> Row:
    configs = setting.configs(method)
    row = Row(
        setting.name,
        method,
        minutes,
        [Stage(str(config.relative_to(REPO)), 60 * minutes / len(configs)) for config in configs],
    )
    row.load_start = os.getloadavg()[0]
    started = time.perf_counter()
    checkpoint = None
    print(f"[{time.strftime('%H:%M:%S')}] start {setting.name} {method}", flush=True)
    try:
        for index, stage in enumerate(row.stages):
            stage.precision = training_precision(stage.config)
            checkpoint, output = run_stage(
                setting, method, index, stage, checkpoint, index == len(row.stages) - 1, out, val_episodes
            )
            stage.steps = steps_of(checkpoint)
            if checkpoint is None and index < len(row.stages) - 1:
                raise RuntimeError(f"stage {index + 1} left no last.ckpt")
        found = TEST_LINE.findall(output)
        if not found:
            raise RuntimeError("no test accuracy in the output")
        row.accuracy, row.ci95 = float(found[-1][0]), float(found[-1][1])
    except Exception as error:  # one method's failure is its row's, never the table's
        row.error = f"{type(error).__name__}: {error}"
    row.wall_seconds = time.perf_counter() - started
    row.load_end = os.getloadavg()[0]
    result = f"{row.accuracy}% ± {row.ci95}%" if row.error is None else f"FAILED: {row.error}"
    print(f"[{time.strftime('%H:%M:%S')}] done  {setting.name} {method}: {result}", flush=True)
    return row


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a daemon thread, while the table runs."""

    def __init__(self, every: float = 15.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        ordered = sorted(self.samples)
        return {
            "samples": len(ordered),
            "mean": round(sum(ordered) / len(ordered), 2),
            "median": ordered[len(ordered) // 2],
            "max": ordered[-1],
        }


def markdown(rows: list[Row]) -> str:
    lines = [
        "| setting | method | budget | steps bought | train precision | test accuracy (1000 episodes) | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if len(row.stages) == 1:
            steps = f"{row.stages[0].steps if row.stages[0].steps is not None else '-'}"
        else:
            steps = " + ".join(
                f"{stage.steps if stage.steps is not None else '-'} ({Path(stage.config).stem})" for stage in row.stages
            )
        precision = " / ".join(stage.precision or "?" for stage in row.stages)
        accuracy = f"{row.accuracy:.2f}% ± {row.ci95:.2f}%" if row.error is None else f"failed: {row.error}"
        lines.append(
            f"| {row.setting} | {row.method} | {row.minutes:g} min | {steps} | {precision} | {accuracy} "
            f"| {row.wall_seconds / 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget per method (default: 4 for Omniglot, 5 for Caltech-101)",
    )
    parser.add_argument("--val_episodes", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=1, help="methods run at once (each OMP_NUM_THREADS=1)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "new_methods_budget")
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    jobs = [(SETTINGS[name], method) for name in args.settings for method in args.methods]
    started = time.time()
    with LoadSampler() as load, ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [
            pool.submit(run_method, setting, method, args.minutes or setting.minutes, out, args.val_episodes)
            for setting, method in jobs
        ]
        for _ in as_completed(futures):  # the files are rewritten as rows finish: a cut-short table keeps them
            rows = [future.result() for future in futures if future.done()]
            conditions = write_results(out, rows, args, started, load)
    print(markdown(rows))
    print(json.dumps(conditions, indent=2))


def _cpu_description() -> str:
    from fsl_lightning.run.cpu_features import this_cpu

    return this_cpu().description()


def write_results(out: Path, rows: list[Row], args: argparse.Namespace, started: float, load: LoadSampler) -> dict:
    conditions = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "ended_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu": _cpu_description(),
        "parallel": args.parallel,
        "threads_per_run": 1,
        "cpus": os.cpu_count(),
        "load_average": load.summary(),
        "val_episodes": args.val_episodes,
    }
    (out / "new_methods_budget.json").write_text(
        json.dumps({"conditions": conditions, "rows": [asdict(row) for row in rows]}, indent=2)
    )
    (out / "new_methods_budget.md").write_text(markdown(rows) + "\n")
    return conditions


if __name__ == "__main__":
    main()
