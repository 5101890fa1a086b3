"""How well a checkpoint's scores say how sure they are: expected calibration error before and after its validation
temperature, and which queries its outlier threshold marks (fsl_lightning/methods/score_calibration.py).

    python benchmarks/score_calibration.py --checkpoint <run with validation>/checkpoints/last.ckpt [--episodes 1000]
                                           [--odd-episodes 200]

The calibration is first fitted again on the checkpoint's validation episodes (as `validate` does), so that the
figures are those of the current code whatever code wrote the checkpoint. Then, on the checkpoint's fixed test
episodes (its data settings; test classes, never seen in training or validation):
accuracy, the expected calibration error (ECE, 15 equal-width confidence bins, as Guo et al. 2017) and the negative
log-likelihood of the plain softmax and of the calibrated one, and the share of test queries marked as outliers.
Then, against the support sets of the first ``--odd-episodes`` test episodes, images of none of the classes: a
blank image (no ink: all zeros after the dataset's decoding), uniform noise, and a test image of another test
class (in-domain, a class the support set does not hold): the mean probability given to the predicted class,
plain and calibrated, and the share marked as outliers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fsl_lightning.classifier import _built  # noqa: E402
from fsl_lightning.episode import SupportSet  # noqa: E402
from fsl_lightning.run.checkpoint_files import read_checkpoint, restore_weights, training_config_in  # noqa: E402
from fsl_lightning.run.cpu_features import this_cpu  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint of a run that validated")
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes")
    parser.add_argument("--odd-episodes", type=int, default=200, help="episodes scored with odd images")
    args = parser.parse_args()
    print(f"CPU: {this_cpu().description()}")
    saved = read_checkpoint(args.checkpoint)
    config = training_config_in(saved)
    config["data"]["test_episodes"] = args.episodes
    method, datamodule = _built(config, str(args.checkpoint))
    restore_weights(method, saved, strict=method.strict_loading)
    trainer().validate(method, datamodule=datamodule, verbose=False)  # fits method.score_calibration
    calibration = method.score_calibration
    if calibration is None:
        raise SystemExit(f"{args.checkpoint}: its data settings have no validation episodes to calibrate on")
    print(f"Checkpoint: {args.checkpoint} (step {saved['global_step']}); calibration: {calibration.description()}")
    episodes = test_episodes(method, datamodule)
    logits = torch.cat([item[1] for item in episodes])
    labels = torch.cat([item[2] for item in episodes])
    way = episodes[0][1].shape[-1]
    print(
        f"{len(episodes)} test episodes, {len(labels)} queries, accuracy "
        f"{100 * float((logits.argmax(-1) == labels).float().mean()):.2f}%"
    )
    for name, probabilities in (
        ("plain softmax", logits.softmax(-1)),
        ("calibrated", calibration.probabilities(logits)),
    ):
        ece = multiclass_calibration_error(probabilities, labels, num_classes=way, n_bins=15, norm="l1")
        nll = torch.nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(), labels)
        print(
            f"  {name:13s}: ECE {100 * float(ece):.2f}%, NLL {float(nll):.4f}, mean confidence "
            f"{100 * float(probabilities.max(-1).values.mean()):.2f}%"
        )
    print(f"  test queries marked as outliers: {100 * float(calibration.outliers(logits).float().mean()):.2f}%")
    odd_images(method, episodes[: args.odd_episodes], calibration)


def test_episodes(method, datamodule) -> list[tuple]:
    """(episode, logits, labels) of every test episode, from Lightning's test loop."""
    recorded = []
    evaluate = method._evaluate

    def recording(episode, metric, stage):
        logits = evaluate(episode, metric, stage)
        recorded.append((episode, logits.float().cpu(), episode.query_labels.cpu()))
        return logits

    method._evaluate = recording
    trainer().test(method, datamodule=datamodule, verbose=False)
    return recorded


def trainer() -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def odd_images(method, episodes: list[tuple], calibration) -> None:
    """Blank, noise and other-class images scored against each episode's support set."""
    method.eval()
    generator = torch.Generator().manual_seed(0)
    rows = {"blank": [], "noise": [], "other test class": []}
    with torch.inference_mode():
        for index, (episode, _, _) in enumerate(episodes):
            state = method.fit_support(SupportSet.of(episode))
            image = episode.query_images[:1]
            other = episodes[(index + 1) % len(episodes)][0]
            # a query of the next episode whose class this episode lacks (episodes draw their classes independently)
            foreign = [
                i
                for i, c in enumerate(other.class_ids[other.query_labels].tolist())
                if c not in set(episode.class_ids.tolist())
            ][:1]
            inputs = {"blank": torch.zeros_like(image), "noise": torch.rand(image.shape, generator=generator)}
            if foreign:
                inputs["other test class"] = other.query_images[foreign]
            for name, images in inputs.items():
                rows[name].append(method.score(state, images.to(image.device)).float().cpu())
    for name, scored in rows.items():
        logits = torch.cat(scored)
        plain = logits.softmax(-1).max(-1).values.mean()
        calibrated = calibration.probabilities(logits).max(-1).values.mean()
        print(
            f"  {name:17s} ({len(logits)}): probability of the predicted class {100 * float(plain):.1f}% plain, "
            f"{100 * float(calibrated):.1f}% calibrated; marked as outliers "
            f"{100 * float(calibration.outliers(logits).float().mean()):.1f}%"
        )


if __name__ == "__main__":
    main()
