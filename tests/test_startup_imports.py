"""What the command line imports: none of the slow optional libraries that a run does not use.

open_clip, timm, wandb and learn2learn each take seconds to import; only a config that uses one may import it (a
CLIP or timm backbone, the WandbLogger overlay, the MAML family's ``engine: learn2learn``). Each case runs in a
fresh interpreter, since this test session may have imported any of them already. Nothing here is timed: the
start-up time itself is measured by ``benchmarks/startup.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = REPO / "experiments" / "omniglot"
OPTIONAL = ("open_clip", "timm", "wandb", "learn2learn")
IMPORTED = "optional libraries imported:"

# Runs each argument list through the CLI in turn, in one interpreter, and after each prints what it has imported.
CHILD = f"""
import json, sys
from fsl_lightning.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit as stop:  # --help ends with SystemExit(0)
        if stop.code:
            raise
    print({IMPORTED!r}, json.dumps([name for name in {OPTIONAL!r} if name in sys.modules]), flush=True)
"""

TINY_FIT = [
    "--data.train_episodes_per_epoch=2",
    "--data.val_episodes=2",
    "--data.test_episodes=2",
    "--trainer.max_steps=2",
    "--trainer.enable_progress_bar=false",
]


def imported_after_each(commands: list[list[str]], cwd: Path) -> tuple[list[list[str]], str]:
    """For each command, run one after the other in a fresh interpreter: the optional libraries imported so far."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(commands)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stdout[-2000:] + child.stderr[-4000:]
    lines = [line for line in child.stdout.splitlines() if line.startswith(IMPORTED)]
    assert len(lines) == len(commands), child.stdout[-2000:]
    return [json.loads(line[len(IMPORTED) :]) for line in lines], child.stdout


@pytest.mark.usefixtures("data_root")
def test_help_and_a_protonet_fit_import_none_of_the_optional_libraries(tmp_path):
    protonet_fit = [
        "fit",
        "--config",
        str(OMNIGLOT / "protonet_5w1s.yaml"),
        *TINY_FIT,
        "--data.train.way=5",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    (after_help, after_fit), stdout = imported_after_each([["--help"], protonet_fit], tmp_path)
    assert "{fit,validate,test,predict}" in stdout  # the help still lists the subcommands
    assert after_help == [], f"python -m fsl_lightning --help imported {after_help}"
    assert after_fit == [], f"fit with a ProtoNet config imported {after_fit}"
    assert list(tmp_path.glob("omniglot_protonet_5w1s/version_0/checkpoints/last.ckpt"))


@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize("engine", ["vmap", "learn2learn"])
def test_maml_imports_learn2learn_only_for_its_learn2learn_engine(engine, tmp_path):
    maml_fit = [
        "fit",
        "--config",
        str(OMNIGLOT / "maml_5w1s.yaml"),
        *TINY_FIT,
        f"--model.init_args.engine={engine}",
        "--model.init_args.backbone.init_args.hidden_channels=8",
        "--data.train_tasks_per_batch=2",
        "--data.train.query=2",
        "--data.evaluation.query=2",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    (after_fit,), _ = imported_after_each([maml_fit], tmp_path)
    assert after_fit == (["learn2learn"] if engine == "learn2learn" else [])
    assert list(tmp_path.glob("omniglot_maml_5w1s/version_0/checkpoints/last.ckpt"))
