"""A measured number for the transfer family: Baseline, RFS-simple and Baseline++ on real Omniglot reach bars that
their broken variants do not.

Stage 1: Conv4 on Omniglot (Vinyals split, 28x28), pre-trained on every 33rd of the split's 4112 training classes
(125 classes from all alphabets and rotations: 300 steps over all 4112 see each class about twice, and left the
features worse than random ones for RFS, 0.502 against 0.582), mini-batches of 32 images, Adam 1e-3, 300 steps,
seed 0. Stage 2: 300 fixed 5-way 1-shot test episodes with 5 queries per class, each solved by the method's own
classifier on the frozen features. Baseline and RFS-simple pre-train the same way (linear head, cross-entropy), so
one pre-training serves both. Bars and the runs that set them (test accuracy, CPU, 1 thread;
``python benchmarks/family_bars.py transfer`` prints the table):

* Baseline    0.851 / 0.851 / 0.863 (seeds 0 / 1 / 2). Broken (seed 0): features untrained 0.203, probe never
  trained 0.198, pre-training labels shuffled 0.412. Bar 0.75 fails all three.
* RFS-simple  0.872 / 0.876 / 0.877. Broken: features untrained 0.582 (0.558 / 0.584 on seeds 1 / 2), pre-training
  labels shuffled 0.474. Bar 0.78 fails both.
* Baseline++  0.769 / 0.778 / 0.768. Broken: features untrained 0.240, probe never trained 0.198, pre-training
  labels shuffled 0.375. Bar 0.67 fails all three.

The RFS-simple test also checks that the same backbone left untrained stays under its bar, on the same episodes.
1 thread, lightly loaded machine: the Baseline / RFS-simple fixture about 75 s, the Baseline++ test about 76 s (the
probes' 200 SGD steps per episode, 300 episodes, take about 40 s of it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import lightning as L
import pytest
import torch

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import ClassImages, EpisodicDataModule
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import Baseline, BaselinePlusPlus, RFSSimple
from fsl_lightning.methods.transfer import Transfer

PRETRAIN_STEPS, PRETRAIN_BATCH, TEST_EPISODES = 300, 32, 300
EPISODE = EpisodeSpec(way=5, shot=1, query=5)
BASE_CLASS_STRIDE, BASE_CLASSES, FEATURES_28PX = 33, 125, 64  # Conv4 on 28x28 images: 64 x 1 x 1
BARS = {"Baseline": 0.75, "RFS-simple": 0.78, "Baseline++": 0.67}


class FewerBaseClasses:
    """A dataset whose training split keeps every ``stride``-th class; the other splits are the dataset's own."""

    def __init__(self, dataset, stride: int) -> None:
        self.dataset, self.stride, self.channels = dataset, stride, dataset.channels

    def prepare(self) -> None:
        self.dataset.prepare()

    def load_split(self, split: str) -> ClassImages:
        classes = self.dataset.load_split(split)
        if split != "train":
            return classes
        kept = range(0, classes.num_classes, self.stride)
        offsets = classes.class_offsets.tolist()
        groups = [classes.images[offsets[c] : offsets[c + 1]] for c in kept]
        return ClassImages.from_groups(groups, [classes.class_names[c] for c in kept])

    def decode_image(self, data, name: str):
        return self.dataset.decode_image(data, name)


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def transfer(cls: type[Transfer], backbone: torch.nn.Module | None = None) -> Transfer:
    backbone = backbone or Conv4(in_channels=1)
    return cls(backbone, num_base_classes=BASE_CLASSES, feature_dim=FEATURES_28PX, optimizer=adam)


def untrained_and_trained_accuracy(
    pretrain,
    evaluators: dict,
    omniglot,
    seed: int = 0,
    untrained: list[str] | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> dict[str, dict]:
    """Pre-trains ``pretrain()`` (seeded by ``seed``: weights and mini-batches), then tests its backbone with each
    of ``evaluators`` (name -> method class, evaluated on that backbone), and before pre-training with those named
    in ``untrained`` (default all); the test episodes are the same fixed ones for every seed. ``callbacks`` join
    the Trainer's (``benchmarks/family_bars.py --cpu-defaults``: the CLI's speed settings)."""
    datamodule = EpisodicDataModule(
        FewerBaseClasses(omniglot, BASE_CLASS_STRIDE),
        evaluation=EPISODE,
        pretrain_batch_size=PRETRAIN_BATCH,
        train_episodes_per_epoch=PRETRAIN_STEPS,
        val_episodes=1,
        test_episodes=TEST_EPISODES,
        seed=seed,
    )
    L.seed_everything(seed)
    method: Transfer = pretrain()
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_steps=PRETRAIN_STEPS,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
            callbacks=list(callbacks),
        )

        def test_accuracies(names) -> dict[str, float]:
            # Each evaluator shares the pre-trained backbone itself; only its episode classifier differs. Building
            # one must not move the global random state, or pre-training would depend on the evaluators.
            with torch.random.fork_rng():
                evaluated = {name: transfer(evaluators[name], method.backbone) for name in names}
                return {
                    name: trainer.test(evaluator, datamodule=datamodule, verbose=False)[0]["test/acc"]
                    for name, evaluator in evaluated.items()
                }

        before = test_accuracies(list(evaluators) if untrained is None else untrained)
        trainer.fit(method, datamodule=datamodule)
        after = test_accuracies(list(evaluators))
    return {
        name: {"trained": after[name], **({"untrained": before[name]} if name in before else {})} for name in evaluators
    }


@pytest.fixture(scope="module")
def linear_pretraining(omniglot, one_thread):
    """Baseline's pre-training (linear head over the base classes), tested as Baseline and as RFS-simple.

    Only RFS-simple is also tested untrained: its logistic regression gets 0.58 from random features, while the
    probes get chance there (measured: 0.20) and their 200 SGD steps per episode cost about 40 s a pass."""
    return untrained_and_trained_accuracy(
        lambda: transfer(Baseline), {"Baseline": Baseline, "RFS-simple": RFSSimple}, omniglot, untrained=["RFS-simple"]
    )


def _check_bar(name: str, result: dict) -> None:
    bar = BARS[name]
    untrained = result.get("untrained", 0.0)
    assert untrained < bar, f"{name} untrained reaches {untrained:.3f}: the bar {bar} tests nothing"
    assert result["trained"] > bar, f"{name} reached {result['trained']:.3f}, under the bar {bar} (see docstring)"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_baseline_on_omniglot_reaches_its_bar(linear_pretraining):
    _check_bar("Baseline", linear_pretraining["Baseline"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_rfs_simple_on_omniglot_reaches_its_bar(linear_pretraining):
    _check_bar("RFS-simple", linear_pretraining["RFS-simple"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_baseline_plus_plus_on_omniglot_reaches_its_bar(omniglot):
    # not tested untrained: its probe gets 0.24 from random features (measured), and a pass costs about 40 s
    result = untrained_and_trained_accuracy(
        lambda: transfer(BaselinePlusPlus), {"Baseline++": BaselinePlusPlus}, omniglot, untrained=[]
    )
    _check_bar("Baseline++", result["Baseline++"])
