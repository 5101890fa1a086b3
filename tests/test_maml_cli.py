"""The MAML configs through the command line: fit, then test from the checkpoint with the same accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsl_lightning.cli import main
from fsl_lightning.methods.maml import MAML

REPO = Path(__file__).resolve().parents[1]
SHORT_RUN = [
    "--model.init_args.backbone.init_args.hidden_channels=16",
    "--data.train_tasks_per_batch=2",
    "--data.train.query=5",
    "--data.evaluation.query=5",
    "--data.train_episodes_per_epoch=4",
    "--data.val_episodes=4",
    "--data.test_episodes=10",
    "--trainer.max_steps=4",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]


@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize("engine", ["auto", "vmap", "learn2learn"])
def test_maml_config_fits_then_tests_from_its_checkpoint(engine, tmp_path):
    config = str(REPO / "experiments" / "omniglot" / "maml_5w1s.yaml")
    common = [*SHORT_RUN, f"--model.init_args.engine={engine}", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    fitted = main(["fit", "--config", config, *common])
    accuracy = fitted.trainer.callback_metrics["test/acc"].item()
    best = fitted.trainer.checkpoint_callback.best_model_path
    assert isinstance(fitted.model, MAML) and fitted.model.engine.name == engine
    again = main(["test", "--config", config, *common, "--ckpt_path", best])
    assert again.trainer.callback_metrics["test/acc"].item() == pytest.approx(accuracy, abs=1e-6)
    loaded = MAML.load_from_checkpoint(best, map_location="cpu")
    assert loaded.inner_lr == 0.4 and loaded.test_inner_steps == 3 and loaded.engine.name == engine
