"""One checkpoint, one number: `test` right after `fit`, `test` from the checkpoint in a new run, and a 2-process
DDP `test` give bit-identical accuracies, for every method that trains here without downloads.

What this catches: evaluation that draws from the global random state (a probe initialised or shuffled by
whatever ran before), per-rank randomness, and a DDP mean that depends on the order in which ranks gather.
Each method trains 2 steps on real data with small settings: the weights need not be good, only fixed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsl_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

SHORT = [
    "--trainer.max_steps=2",
    "--data.train_episodes_per_epoch=2",
    "--data.val_episodes=2",
    "--data.test_episodes=30",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.accelerator=cpu",
    "--trainer.log_every_n_steps=1",
]
OMNIGLOT_5WAY = ["--data.train.way=5", "--data.train.query=5"]
CALTECH_SMALL = ["--data.dataset.init_args.image_size=32", "--model.init_args.backbone.init_args.channels=[8,16,32,64]"]
PRETRAINING_SMALL = [*CALTECH_SMALL, "--data.pretrain_batch_size=16"]
SIAMESE_SMALL = [  # a narrow embedding keeps KochNet's checkpoints small (its default 4096-d layer is 150 MB)
    "--data.train.way=8",
    "--data.evaluation.way=5",
    "--model.init_args.backbone.init_args.out_features=64",
    "--model.init_args.embedding_dim=64",
]

#: method -> (config, extra arguments); the methods that need downloaded weights (CLIP, DINOv2, ImageNet
#: torchvision backbones) or a teacher checkpoint (RFS-distill, SKD generation 1) are left out.
METHODS = {
    "ProtoNet": ("omniglot/protonet_5w1s.yaml", OMNIGLOT_5WAY),
    "MatchingNet": ("omniglot/matchingnet_5w1s.yaml", OMNIGLOT_5WAY),
    "RelationNet": ("omniglot/relationnet_5w1s.yaml", OMNIGLOT_5WAY),
    "Siamese": ("omniglot/siamese_20w1s.yaml", SIAMESE_SMALL),
    "NearestNeighbour": ("omniglot/nn1_20w1s.yaml", []),
    "MAML": ("omniglot/maml_5w1s.yaml", ["--data.train_tasks_per_batch=2"]),
    "FOMAML": ("omniglot/fomaml_5w1s.yaml", ["--data.train_tasks_per_batch=2"]),
    "MetaSGD": ("omniglot/metasgd_5w1s.yaml", ["--data.train_tasks_per_batch=2"]),
    "ANIL": ("omniglot/anil_5w1s.yaml", ["--data.train_tasks_per_batch=2"]),
    "Reptile": ("omniglot/reptile_5w1s.yaml", ["--data.train_tasks_per_batch=2"]),
    "Baseline": ("caltech101/baseline_5w1s.yaml", PRETRAINING_SMALL),
    "BaselinePlusPlus": ("caltech101/baseline_pp_5w1s.yaml", PRETRAINING_SMALL),
    "RFSSimple": ("caltech101/rfs_simple_5w1s.yaml", PRETRAINING_SMALL),
    "SKD": ("caltech101/skd_5w1s.yaml", PRETRAINING_SMALL),
    "R2D2": ("caltech101/r2d2_5w1s.yaml", [*CALTECH_SMALL, "--data.train.query=2"]),
    "MetaOptNet": ("omniglot/metaoptnet_svm_5w1s.yaml", ["--data.train_tasks_per_batch=2", "--data.train.shot=2"]),
}
#: methods with nothing to train: tested without a checkpoint (the first two numbers come from two `test` runs)
UNTRAINED = {"NearestNeighbour"}


def _arguments(method: str, save_dir: Path) -> list[str]:
    config, extra = METHODS[method]
    return ["--config", str(EXPERIMENTS / config), *SHORT, *extra, f"--trainer.logger.init_args.save_dir={save_dir}"]


def _logged_test_accuracy(save_dir: Path) -> float:
    (metrics,) = save_dir.glob("*/version_*/metrics.csv")
    with metrics.open() as handle:
        values = [row["test/acc"] for row in csv.DictReader(handle) if row.get("test/acc")]
    assert len(values) == 1, f"expected one test/acc in {metrics}, found {values}"
    return float(values[0])


@pytest.fixture(scope="module")
def three_tests(tmp_path_factory, data_root) -> dict[str, tuple[float, float, float]]:
    """method -> (accuracy of the test after fit, of `test` from the checkpoint, of the 2-process DDP test)."""
    root = tmp_path_factory.mktemp("same_number")
    after_fit, from_checkpoint, ddp_jobs = {}, {}, []
    for method in METHODS:
        if method in UNTRAINED:
            cli, checkpoint = main(["test", *_arguments(method, root / method / "fit")]), []
        else:
            cli = main(["fit", *_arguments(method, root / method / "fit")])
            checkpoint = ["--ckpt_path", cli.trainer.checkpoint_callback.best_model_path]
        after_fit[method] = cli.trainer.callback_metrics["test/acc"].item()
        cli = main(["test", *_arguments(method, root / method / "test"), *checkpoint])
        from_checkpoint[method] = cli.trainer.callback_metrics["test/acc"].item()
        ddp_jobs.append([*_arguments(method, root / method / "ddp"), *checkpoint])
    jobs = root / "ddp_jobs.json"
    jobs.write_text(json.dumps(ddp_jobs))
    worker = [sys.executable, str(REPO / "tests" / "ddp_test_worker.py"), str(jobs)]
    result = subprocess.run(worker, capture_output=True, text=True, timeout=1200, env=os.environ, cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    return {
        method: (after_fit[method], from_checkpoint[method], _logged_test_accuracy(root / method / "ddp"))
        for method in METHODS
    }


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_the_same_checkpoint_gives_the_same_test_accuracy_after_fit_from_file_and_on_two_processes(three_tests, method):
    after_fit, from_checkpoint, two_processes = three_tests[method]
    assert after_fit == from_checkpoint == two_processes, (
        f"{method}: test after fit {after_fit!r}, from the checkpoint {from_checkpoint!r}, "
        f"2-process DDP {two_processes!r}"
    )
