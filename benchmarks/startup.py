"""Start-up time of the CLI, as a ratio to ``python -c "import torch"`` measured in the same run.

    python benchmarks/startup.py [--rounds 7] [--code /path/to/other/checkout ...]

Every round runs each command below once, each in a fresh interpreter, one after the other (interleaved, and in a
rotated order from round to round, so that the load of a shared machine falls on all of them alike):

* ``python -c "import torch"``: the reference;
* ``python -c "from lightning.pytorch.cli import LightningCLI"``: the floor of any LightningCLI, that is Lightning
  with what it imports itself (torchmetrics, which imports torchvision, torch._dynamo and scipy.signal);
* for each source tree (this checkout, and every ``--code`` one, put first on PYTHONPATH):
  ``python -m fsl_lightning --help``, and
  ``python -m fsl_lightning fit --config experiments/omniglot/protonet_5w1s.yaml`` ended as its first training
  step begins (``first_step.ExitAtFirstStep``), run from a scratch folder that takes its outputs.

Prints, per command, the median wall time, the medians over rounds of its ratios to that round's ``import torch``
and to that round's floor, the median peak memory, and which of open_clip, timm, wandb, learn2learn and torchvision
it imported. The fit time includes Lightning's validation sanity check (two episodes), not the first step's compute.
Needs real Omniglot under $FSL_DATA_ROOT.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
CONFIG = Path("experiments/omniglot/protonet_5w1s.yaml")
# What a run prints before the names of the WATCHED libraries it has imported (also first_step.py's fit runs).
MARKER = "imported so far:"
WATCHED = ("open_clip", "timm", "wandb", "learn2learn", "torchvision")

# The import check (untimed): the same code in-process, then a line saying which watched libraries it imported.
REPORT_IMPORTS = f"import json, sys; print({MARKER!r}, json.dumps([n for n in {WATCHED!r} if n in sys.modules]))"
RUN_CLI = """
import runpy, sys
sys.argv = ["fsl_lightning", *sys.argv[1:]]
try:
    runpy.run_module("fsl_lightning", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
"""


@dataclass
class Command:
    label: str
    argv: list[str]
    pythonpath: str = ""
    probe_argv: list[str] | None = None  # the same command under IMPORT_PROBE; None when the command reports itself
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # to import torch, in the same round
    floor_ratios: list[float] = field(default_factory=list)  # to importing LightningCLI, in the same round
    peak_mb: list[float] = field(default_factory=list)
    imported: list[str] | None = None


def timed_run(command: Command, scratch: Path) -> tuple[float, float, str]:
    """Wall seconds, peak resident MB and output of one fresh run of ``command``."""
    env = {**os.environ, "PYTHONPATH": command.pythonpath} if command.pythonpath else dict(os.environ)
    with tempfile.TemporaryDirectory(dir=scratch) as cwd, open(Path(cwd) / "output.txt", "w+") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command.argv, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # wait4: the peak memory of this child alone
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise SystemExit(f"{command.label} failed (exit {process.returncode}):\n{text[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, text


def imported_libraries(text: str) -> list[str] | None:
    lines = [line for line in text.splitlines() if line.startswith(MARKER)]
    return json.loads(lines[-1][len(MARKER) :]) if lines else None


def commands_for(code: Path, label: str, python: str) -> list[Command]:
    pythonpath = os.pathsep.join([str(code), str(BENCHMARKS)])
    help_argv = ["--help"]
    fit_argv = [
        "fit",
        "--config",
        str(code / CONFIG),
        "--trainer.max_steps=1",
        "--test_after_fit=false",
        "--trainer.logger.init_args.save_dir=outputs",
        "--trainer.callbacks+=first_step.ExitAtFirstStep",
    ]
    probe = [python, "-c", RUN_CLI + REPORT_IMPORTS]
    return [
        Command(f"--help [{label}]", [python, "-m", "fsl_lightning", *help_argv], pythonpath, [*probe, *help_argv]),
        Command(f"fit to its 1st step [{label}]", [python, "-m", "fsl_lightning", *fit_argv], pythonpath),
    ]


def python_code_command(label: str, code: str, python: str) -> Command:
    return Command(label, [python, "-c", code], probe_argv=[python, "-c", f"{code}\n{REPORT_IMPORTS}"])


def measure(commands: list[Command], rounds: int, warmup: int, scratch: Path) -> None:
    torch_import, floor = commands[0], commands[1]
    for round_index in range(-warmup, rounds):
        shift = round_index % len(commands)
        this_round = {}
        for command in commands[shift:] + commands[:shift]:
            seconds, peak_mb, text = timed_run(command, scratch)
            this_round[command.label] = seconds
            if command.probe_argv is None and command.imported is None:
                command.imported = imported_libraries(text)
            if round_index >= 0:
                command.seconds.append(seconds)
                command.peak_mb.append(peak_mb)
        if round_index >= 0:
            for command in commands:
                command.ratios.append(this_round[command.label] / this_round[torch_import.label])
                command.floor_ratios.append(this_round[command.label] / this_round[floor.label])
            summary = ", ".join(f"{label} {seconds:.1f}s" for label, seconds in this_round.items())
            print(f"round {round_index + 1}/{rounds}: {summary}", file=sys.stderr, flush=True)


def check_imports(commands: list[Command], scratch: Path) -> None:
    for command in commands:
        if command.probe_argv is not None:
            probe = Command(command.label, command.probe_argv, command.pythonpath)
            command.imported = imported_libraries(timed_run(probe, scratch)[2])


def report(commands: list[Command]) -> str:
    lines = [
        "| command | median wall s | ratio to `import torch` | ratio to the floor | median peak MB | imported (of "
        + ", ".join(WATCHED)
        + ") |",
        "|---|---|---|---|---|---|",
    ]
    for command in commands:
        imported = "n/a" if command.imported is None else (", ".join(command.imported) or "none")
        lines.append(
            f"| {command.label} | {statistics.median(command.seconds):.2f} | {statistics.median(command.ratios):.2f} "
            f"| {statistics.median(command.floor_ratios):.2f} | {statistics.median(command.peak_mb):.0f} | {imported} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (medians over these)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted (file caches)")
    parser.add_argument("--code", type=Path, nargs="*", default=[], help="other source trees to time beside this")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if "FSL_DATA_ROOT" not in os.environ:
        raise SystemExit("Set FSL_DATA_ROOT to the folder that holds omniglot/ (the fit command trains on it).")

    python = args.python
    commands = [python_code_command("import torch", "import torch", python)]
    commands.append(
        python_code_command("import LightningCLI (floor)", "from lightning.pytorch.cli import LightningCLI", python)
    )
    for code in args.code:
        commands += commands_for(code.resolve(), code.resolve().name, python)
    commands += commands_for(REPO, "this checkout", python)

    with tempfile.TemporaryDirectory(prefix="fsl_startup_") as scratch:
        check_imports(commands, Path(scratch))
        measure(commands, args.rounds, args.warmup, Path(scratch))
    print(report(commands))


if __name__ == "__main__":
    main()
