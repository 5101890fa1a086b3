"""DDP training on CPU with 2 processes: each rank draws its own episode and the gradients are averaged.

DDP runs in a subprocess: `strategy=ddp` re-launches its command line for rank 1, which inside pytest
would be the whole pytest session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.data.datamodule import STREAMS
from fsl_lightning.data.sampler import episode_generator, sample_episode
from fsl_lightning.episode import EpisodeSpec, split_support_query
from fsl_lightning.methods import ProtoNet

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
SPEC = EpisodeSpec(way=5, shot=1, query=5)
ONE_STEP = [
    "--data.train.way=5",
    "--data.train.query=5",
    "--data.train_episodes_per_epoch=1",
    "--data.val_episodes=2",
    "--trainer.max_steps=1",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--test_after_fit=false",
    "--trainer.num_sanity_val_steps=0",
    "--model.init_args.lr_scheduler=null",
    "--speed.cpu_bf16=false",  # fp32, as the hand-computed step below (bf16 differs from it by its rounding)
]

SGD = '{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}'


def fit(out: Path, *extra: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "fsl_lightning",
        "fit",
        "--config",
        CONFIG,
        *ONE_STEP,
        f"--trainer.logger.init_args.save_dir={out}",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = out.glob("*/version_0/checkpoints/last.ckpt")
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def test_one_ddp_step_equals_one_step_on_the_mean_loss_of_both_ranks_episodes(omniglot, tmp_path):
    # The initial weights: the same seed, one step with a zero learning rate.
    initial = fit(tmp_path / "initial", "--model.init_args.optimizer.init_args.lr=0.0")
    # Plain SGD, not the config's Adam: Adam's first step is lr * sign(gradient), which turns rounding noise into
    # full-size steps (see the conv biases below).
    ddp = fit(tmp_path / "ddp", "--trainer.devices=2", "--trainer.strategy=ddp", f"--model.init_args.optimizer={SGD}")

    expected = expected_ddp_step(initial, EpisodicDataModule(omniglot, train=SPEC, evaluation=SPEC))
    changed = 0
    for name, weight in expected.items():
        assert torch.allclose(ddp[name], weight, atol=1e-5), name
        changed += not torch.allclose(initial[name], weight)
    assert changed > 0


def expected_ddp_step(initial: dict, train: EpisodicDataModule, world: int = 2) -> dict:
    """The weights after one SGD step (lr 0.1) from ``initial`` on the mean loss of the training episodes keyed
    0..world-1 (step 0 of rank r has key step * world + rank), those that DDP is checked against: batch-norm buffers
    (per rank in DDP; rank 0's are saved) and Conv4's conv biases (fed to batch norm, which subtracts them again:
    their gradient is rounding noise) left out."""
    model = ProtoNet(backbone=Conv4(in_channels=1))
    model.load_state_dict(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train.setup("fit")
    classes = train.splits["train"]
    losses = []
    for rank in range(world):
        indices, class_ids = sample_episode(classes.class_offsets, SPEC, episode_generator(0, STREAMS["train"], rank))
        episode = split_support_query(classes.images[indices].float() / 255, class_ids, SPEC)
        losses.append(model.episode_loss(episode, model.episode_logits(episode)))
    torch.stack(losses).mean().backward()
    optimizer.step()
    return {
        name: weight
        for name, weight in model.state_dict().items()
        if not (name.endswith("num_batches_tracked") or "running_" in name or name.endswith(".0.bias"))
    }
