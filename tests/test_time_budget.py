"""A schedule fitted to the time budget: a run told its budget is short (its steps slowed down) still ends with the
learning rate at the schedule's end, the printed command repeats it by steps, and a resumed run keeps its length."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, MultiStepLR, PolynomialLR, StepLR

from fsl_lightning.backbones import Conv4
from fsl_lightning.callbacks import TimeBudgetSchedule
from fsl_lightning.callbacks.time_budget import _scale_length
from fsl_lightning.methods import ProtoNet
from fsl_lightning.run.errors import UserError
from interruptions import SlowSteps

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
CONFIGURED_STEPS = 1000
# 2-way Omniglot episodes (a step takes milliseconds) slowed to about 0.1 s: 8 seconds hold about 60 of 1000 steps.
SHORT_BUDGET = [
    "--data.train.way=2",
    "--data.train.query=2",
    "--data.evaluation.way=2",
    "--data.evaluation.query=2",
    "--data.train_episodes_per_epoch=25",
    "--data.val_episodes=2",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
    f"--trainer.max_steps={CONFIGURED_STEPS}",
    "--trainer.max_time=00:00:00:08",
    "--model.init_args.lr_scheduler.class_path=torch.optim.lr_scheduler.CosineAnnealingLR",
    f"--model.init_args.lr_scheduler.init_args.T_max={CONFIGURED_STEPS}",
    "--time_budget.warmup_steps=3",
    "--time_budget.timed_steps=10",
    "--time_budget.margin=0.2",
    "--time_budget.checks=0",  # one plan, so that a run resumed from any checkpoint after it ends alike
]
SLOWED_WITH_CHECKPOINTS = {
    "trainer": {
        "callbacks": [
            {
                "class_path": "fsl_lightning.callbacks.ModelCheckpoint",
                "init_args": {
                    "save_last": True,
                    "save_top_k": -1,
                    "every_n_train_steps": 10,
                    "filename": "step{step}",
                    "auto_insert_metric_name": False,
                },
            },
            {"class_path": "interruptions.SlowSteps", "init_args": {"seconds": 0.1}},
        ]
    }
}


def _cli(*arguments: str, cwd: Path) -> str:
    environment = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fsl_lightning", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def short_budget_run(tmp_path_factory):
    """One run whose budget holds far fewer steps than its schedule: (its folder, the CLI's output)."""
    folder = tmp_path_factory.mktemp("short_budget")
    (folder / "slowed.yaml").write_text(yaml.safe_dump(SLOWED_WITH_CHECKPOINTS))
    output = _cli(
        "fit",
        "--config",
        CONFIG,
        "--config",
        "slowed.yaml",
        *SHORT_BUDGET,
        "--trainer.logger.init_args.save_dir=runs",
        cwd=folder,
    )
    return folder, output


def _run_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob("runs/*/version_*"))


@pytest.mark.slow
def test_a_short_budget_ends_with_the_learning_rate_at_the_schedules_end(short_budget_run):
    folder, output = short_budget_run
    last = _checkpoint(_run_folders(folder)[0] / "checkpoints" / "last.ckpt")
    plan = last["callbacks"]["fsl_time_budget"]["plan"]
    assert plan[0][0] == 13  # planned after 3 + 10 steps
    planned = plan[-1][1]
    assert 13 < planned < CONFIGURED_STEPS  # planned after the 13 timed steps, far short of the configured 1000
    assert last["global_step"] == planned  # stopped by its step count, not by the clock
    assert last["lr_schedulers"][0]["T_max"] == planned
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    config = yaml.safe_load((_run_folders(folder)[0] / "config.yaml").read_text())
    assert config["time_budget"]["plan"] == [list(change) for change in plan]  # the run's config records the plan
    assert f"Time budget: training {planned} steps" in output


@pytest.mark.slow
def test_the_printed_command_repeats_the_run_by_steps(short_budget_run):
    folder, output = short_budget_run
    command = re.search(r"without a clock: python -m fsl_lightning (.*)", output).group(1)
    assert "--trainer.max_time=null" in command
    _cli(*shlex.split(command), cwd=folder)
    timed, repeated = (_checkpoint(run / "checkpoints" / "last.ckpt") for run in _run_folders(folder)[:2])
    assert repeated["global_step"] == timed["global_step"]
    for name, tensor in timed["state_dict"].items():
        assert torch.equal(repeated["state_dict"][name], tensor), name  # the same weights, to the bit


@pytest.mark.slow
def test_a_resumed_run_keeps_the_planned_length(short_budget_run, tmp_path):
    folder, _ = short_budget_run
    timed_run = _run_folders(folder)[0]
    planned = _checkpoint(timed_run / "checkpoints" / "last.ckpt")["global_step"]
    midway = timed_run / "checkpoints" / "step30.ckpt"  # after the plan (step 13), before the end
    assert _checkpoint(midway)["global_step"] == 30 < planned
    # a larger budget on resume: the plan stands all the same (the config's 1000 steps would not fit the first one)
    (tmp_path / "slowed.yaml").write_text(yaml.safe_dump(SLOWED_WITH_CHECKPOINTS))
    _cli(
        "fit",
        "--config",
        CONFIG,
        "--config",
        "slowed.yaml",
        *SHORT_BUDGET,
        "--trainer.max_time=00:00:05:00",
        f"--ckpt_path={midway}",
        "--trainer.logger.init_args.save_dir=runs",
        cwd=tmp_path,
    )
    resumed = _checkpoint(next(tmp_path.glob("runs/*/version_*")) / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == planned
    assert resumed["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    uninterrupted = _checkpoint(timed_run / "checkpoints" / "last.ckpt")
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name


@pytest.mark.usefixtures("data_root")
@pytest.mark.slow
def test_two_ddp_processes_follow_rank_zeros_plan(tmp_path):
    """Under DDP every rank makes the plan's changes at the same steps (rank 0's clock decides; recording the plan
    must not call a collective on rank 0 alone, as ``trainer.log_dir`` does), and the run ends annealed."""
    (tmp_path / "slowed.yaml").write_text(yaml.safe_dump(SLOWED_WITH_CHECKPOINTS))
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp", "--time_budget.checks=10", "--trainer.max_time=00:00:00:12"]
    _cli(
        "fit",
        "--config",
        CONFIG,
        "--config",
        "slowed.yaml",
        *SHORT_BUDGET,
        *ddp,
        "--trainer.logger.init_args.save_dir=runs",
        cwd=tmp_path,
    )
    last = _checkpoint(next(tmp_path.glob("runs/*/version_*")) / "checkpoints" / "last.ckpt")
    planned = last["callbacks"]["fsl_time_budget"]["plan"][-1][1]
    assert last["global_step"] == planned < CONFIGURED_STEPS
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def _tiny_datamodule(omniglot):
    from fsl_lightning.data import EpisodicDataModule
    from fsl_lightning.episode import EpisodeSpec

    return EpisodicDataModule(
        omniglot,
        train=EpisodeSpec(2, 1, 1),
        evaluation=EpisodeSpec(2, 1, 1),
        train_episodes_per_epoch=10,
        val_episodes=1,
        test_episodes=1,
    )


@pytest.fixture
def tiny_datamodule(omniglot):
    return _tiny_datamodule(omniglot)


def _fit(tiny_datamodule, tmp_path, scheduler, callbacks, **trainer_args) -> L.Trainer:
    L.seed_everything(0)
    method = ProtoNet(Conv4(1), lr_scheduler=scheduler)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **trainer_args,
    )
    trainer.fit(method, tiny_datamodule)
    return trainer


def test_a_budget_that_holds_every_step_changes_nothing(tiny_datamodule, tmp_path):
    budget = TimeBudgetSchedule(warmup_steps=2, timed_steps=3)
    trainer = _fit(
        tiny_datamodule,
        tmp_path,
        lambda optimizer: CosineAnnealingLR(optimizer, T_max=20),
        [budget],
        max_steps=20,
        max_time={"hours": 1},
    )
    assert trainer.global_step == 20 and budget.planned_steps == 20
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 20


def test_the_plan_of_an_earlier_run_applies_without_a_clock(tiny_datamodule, tmp_path):
    budget = TimeBudgetSchedule(plan=[(5, 12)], warmup_steps=2, timed_steps=3)
    trainer = _fit(
        tiny_datamodule, tmp_path, lambda optimizer: CosineAnnealingLR(optimizer, T_max=40), [budget], max_steps=40
    )
    assert trainer.global_step == 12
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("pace, from_step, shorter", [((0.1, 0.3), 15, True), ((0.2, 0.05), 10, False)])
def test_a_machine_whose_pace_changes_midway_gets_a_rescaled_schedule_that_still_ends(
    pace, from_step, shorter, omniglot, tiny_datamodule, tmp_path
):
    """Planned at step 7 at one pace, then three (four) times slower (faster) from an early step, far before the
    plan's end (about 7 + 8 s x 0.8 / pace steps): the checks shorten (lengthen) the schedule, and the run still
    ends by its step count with the learning rate at the schedule's end. The sleeps dominate the tiny steps, so that
    a busy machine changes little."""
    budget = TimeBudgetSchedule(warmup_steps=2, timed_steps=5, margin=0.2, checks=8)
    trainer = _fit(
        tiny_datamodule,
        tmp_path,
        lambda optimizer: CosineAnnealingLR(optimizer, T_max=1000),
        [budget, SlowSteps(pace[0], from_step=from_step, then_seconds=pace[1])],
        max_steps=1000,
        max_time={"seconds": 10},
    )
    first_plan, last_plan = budget.plan_changes[0][1], budget.planned_steps
    assert len(budget.plan_changes) >= 2 and (last_plan < first_plan if shorter else last_plan > first_plan)
    assert last_plan < 1000
    assert trainer.global_step == last_plan  # ended by its step count, not by the clock
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the recorded changes, made again at the same steps without a clock, give the same weights to the bit
    timed_weights = {name: tensor.clone() for name, tensor in trainer.lightning_module.state_dict().items()}
    repeated = _fit(
        _tiny_datamodule(omniglot),
        tmp_path,
        lambda optimizer: CosineAnnealingLR(optimizer, T_max=1000),
        [TimeBudgetSchedule(plan=budget.plan_changes)],
        max_steps=1000,
    )
    assert repeated.global_step == last_plan
    for name, tensor in repeated.lightning_module.state_dict().items():
        assert torch.equal(tensor, timed_weights[name]), name


def test_a_schedule_it_cannot_scale_is_named_in_a_warning(tiny_datamodule, tmp_path):
    with pytest.warns(UserWarning, match="cannot scale the length of LambdaLR"):
        trainer = _fit(
            tiny_datamodule,
            tmp_path,
            lambda optimizer: LambdaLR(optimizer, lambda step: 1.0),
            [TimeBudgetSchedule(), SlowSteps(0.0)],
            max_steps=3,
            max_time={"hours": 1},
        )
    assert trainer.global_step == 3


def test_a_budget_too_short_to_time_the_steps_says_so(tiny_datamodule, tmp_path):
    with pytest.warns(UserWarning, match="too short to time the steps"):
        trainer = _fit(
            tiny_datamodule,
            tmp_path,
            lambda optimizer: CosineAnnealingLR(optimizer, T_max=1000),
            [TimeBudgetSchedule(warmup_steps=1000), SlowSteps(0.2)],
            max_steps=1000,
            max_time={"seconds": 2},
        )
    assert trainer.global_step < 1000


@pytest.mark.parametrize("options, mistake", [({"margin": 1.5}, "margin"), ({"plan": [(0, 5)]}, "plan")])
def test_bad_options_are_one_clear_line(options, mistake):
    with pytest.raises(UserError, match=f"--time_budget.{mistake}"):
        TimeBudgetSchedule(**options)


@pytest.mark.parametrize(
    "make, end_lr",
    [
        (lambda optimizer: CosineAnnealingLR(optimizer, T_max=100), 0.0),
        (lambda optimizer: LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=100), 0.1),
        (lambda optimizer: PolynomialLR(optimizer, total_iters=100, power=2.0), 0.0),
        (lambda optimizer: StepLR(optimizer, step_size=25, gamma=0.5), 0.5**4),
        (lambda optimizer: MultiStepLR(optimizer, milestones=[50, 75], gamma=0.1), 0.01),
    ],
)
def test_each_scaled_schedule_reaches_its_end_with_the_last_step(make, end_lr):
    """Scaled from 100 to 40 steps before any step: the learning rate after step 40 is the one after step 100."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make(optimizer)
    _scale_length(scheduler, 0.4)
    for _ in range(40):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(end_lr, abs=1e-9)
    if isinstance(scheduler, MultiStepLR):
        assert scheduler.milestones == Counter({20: 1, 30: 1})
