"""Scores that do not overclaim: the temperature and the outlier threshold fitted on validation episodes
(fsl_lightning/methods/score_calibration.py), checked against their definitions, and carried from a run's
validation through its checkpoint to ``predict`` and the Python API."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fsl_lightning.classifier import FewShotClassifier
from fsl_lightning.cli import main
from fsl_lightning.methods.score_calibration import (
    CHECKPOINT_KEY,
    OUTLIER_QUANTILE,
    ScoreCalibration,
    ScoreCalibrationFit,
)
from fsl_lightning.run.checkpoint_files import read_checkpoint
from omniglot_folders import support_and_query_folders

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")


def over_confident_episodes(temperature: float, episodes: int = 400, queries: int = 75, way: int = 5):
    """Episodes whose labels are drawn from softmax(true logits), scored with the true logits x ``temperature``:
    the calibrating temperature is ``temperature``."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(episodes):
        true_logits = 2 * torch.randn(queries, way, generator=generator)
        labels = torch.multinomial(true_logits.softmax(-1), 1, generator=generator).squeeze(-1)
        yield true_logits * temperature, labels


def test_the_fitted_temperature_undoes_an_over_confident_scale_and_minimises_the_validation_nll():
    fit = ScoreCalibrationFit()
    episodes = list(over_confident_episodes(3.0))
    for logits, labels in episodes:
        fit.update(logits, labels)
    calibration = fit.compute()
    assert calibration.temperature == pytest.approx(3.0, rel=0.05)
    assert (calibration.episodes, calibration.queries) == (400, 400 * 75)
    logits, labels = torch.cat([e[0] for e in episodes]).double(), torch.cat([e[1] for e in episodes])

    def nll(temperature: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / temperature, labels))

    fitted = calibration.temperature
    assert nll(fitted) < min(nll(fitted * 1.001), nll(fitted / 1.001))  # the minimum of the validation NLL
    max_logits = logits.max(-1).values
    assert calibration.outlier_max_logit == pytest.approx(float(torch.quantile(max_logits, OUTLIER_QUANTILE)))
    assert calibration.outliers(logits.float()).float().mean() == pytest.approx(OUTLIER_QUANTILE, abs=1e-3)
    probabilities = calibration.probabilities(logits)
    assert torch.allclose(probabilities, (logits / calibration.temperature).softmax(-1).float())
    assert torch.equal(probabilities.argmax(-1), logits.argmax(-1))  # calibration changes no prediction


def test_shares_of_the_episodes_fit_what_all_of_them_fit():
    """As DDP ranks that each validate a share of the episodes and sum / gather their states."""
    whole, first, second = ScoreCalibrationFit(), ScoreCalibrationFit(), ScoreCalibrationFit()
    for index, (logits, labels) in enumerate(over_confident_episodes(0.5, episodes=60)):
        whole.update(logits, labels)
        (first if index % 2 else second).update(logits, labels)
    first.merge_state(second)
    assert first.compute() == whole.compute()  # to the bit


def test_a_validation_without_errors_gives_the_smallest_temperature():
    fit = ScoreCalibrationFit()
    fit.update(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 1]))
    assert fit.compute().temperature == pytest.approx(0.01)


@pytest.fixture(scope="module")
def validated(tmp_path_factory, data_root) -> Path:
    """The last checkpoint of a 20-step ProtoNet run validated on 20 episodes."""
    out = tmp_path_factory.mktemp("fit")
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.train.way=5",
            "--data.train_episodes_per_epoch=20",
            "--data.val_episodes=20",
            "--trainer.max_steps=20",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={out}",
        ]
    )
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def test_validation_fits_the_calibration_into_the_checkpoint_and_predict_uses_it(
    validated, data_root, tmp_path, capsys
):
    calibration = ScoreCalibration(**read_checkpoint(validated)[CHECKPOINT_KEY])
    assert calibration.episodes == 20 and calibration.queries == 20 * 75  # the sanity check's 2 are not kept
    support, queries, _ = support_and_query_folders(data_root, tmp_path, 5, 3)
    output = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            "--ckpt_path",
            str(validated),
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            f"--prediction_writer.output_path={output}",
        ]
    )
    assert (
        f"Scores: softmax(logits / {calibration.temperature:.3g}), the temperature fitted on 20"
        in capsys.readouterr().out
    )
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["outlier"] for row in rows} <= {"yes", "no"} and len(rows) == 15

    classifier = FewShotClassifier.from_checkpoint(validated).fit_support(support)
    predictions = classifier.predict(queries)
    assert [p.outlier for p in predictions] == [row["outlier"] == "yes" for row in rows]
    assert [p.score for p in predictions] == pytest.approx([float(row["probability"]) for row in rows], abs=1e-6)
    blank = torch.zeros(1, 1, 28, 28)
    logits = classifier.method.score(classifier.support.state, blank)
    assert classifier.predict(blank)[0].score == pytest.approx(float(calibration.probabilities(logits).max()))


def test_a_checkpoint_without_validation_says_its_scores_are_not_calibrated(validated, data_root, tmp_path, capsys):
    saved = torch.load(validated, map_location="cpu", weights_only=True)
    del saved[CHECKPOINT_KEY]
    uncalibrated = tmp_path / "uncalibrated.ckpt"
    torch.save(saved, uncalibrated)
    support, queries, _ = support_and_query_folders(data_root, tmp_path, 5, 1)
    output = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            "--ckpt_path",
            str(uncalibrated),
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            f"--prediction_writer.output_path={output}",
        ]
    )
    assert "Scores (probability): not calibrated and no outlier check" in capsys.readouterr().out
    with output.open() as handle:
        assert {row["outlier"] for row in csv.DictReader(handle)} == {""}
