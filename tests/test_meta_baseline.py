"""Meta-Baseline (Chen et al., ICCV 2021): the cosine classifier checked by hand, its learned temperature, and
stage 2 starting from (or refusing) a stage-1 Classifier-Baseline checkpoint made here by a tiny real run."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from fsl_lightning.backbones import Conv4, ResNet12
from fsl_lightning.data import Caltech101, EpisodicDataModule
from fsl_lightning.episode import Episode, EpisodeSpec, SupportSet
from fsl_lightning.methods import ClassifierBaseline, MetaBaseline
from fsl_lightning.methods.meta_baseline import CosineCentroid
from fsl_lightning.run.checkpoint_files import restore_weights
from fsl_lightning.run.composed_configs import load_config
from fsl_lightning.run.errors import UserError

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")

# Two classes of two 2-d "images" each (a Flatten backbone makes them the features), two queries. Class 0's
# mean (0.5, 1.5) points along (1, 3): the mean is normalised, not the features (their normalised mean is
# along (1, 1)); class 1's mean (-1.5, 0) points along (-1, 0).
SUPPORT = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [-2.0, 0.0]])
SUPPORT_LABELS = torch.tensor([0, 0, 1, 1])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
QUERY_LABELS = torch.tensor([0, 0])
# cosines: query (1, 0) -> 1/sqrt(10) and -1; query (0, 1) -> 3/sqrt(10) and 0
COSINES = torch.tensor([[1 / math.sqrt(10), -1.0], [3 / math.sqrt(10), 0.0]])


def tiny_episode() -> Episode:
    as_images = lambda features: features.view(-1, 1, 1, 2)  # noqa: E731
    return Episode(as_images(SUPPORT), SUPPORT_LABELS, as_images(QUERIES), QUERY_LABELS, torch.tensor([3, 8]))


def test_logits_are_ten_times_the_cosine_to_the_class_mean_by_hand():
    model = MetaBaseline(nn.Flatten())
    episode = tiny_episode()
    torch.testing.assert_close(model.episode_logits(episode), 10 * COSINES)
    torch.testing.assert_close(
        model.score(model.fit_support(SupportSet.of(episode)), episode.query_images), 10 * COSINES
    )


def test_the_classifier_baseline_scores_episodes_by_the_same_cosine_rule():
    logits = CosineCentroid()(SUPPORT, SUPPORT_LABELS, QUERIES, way=2)
    torch.testing.assert_close(logits, 10 * COSINES)
    assert isinstance(ClassifierBaseline(nn.Flatten()).episode_classifier, CosineCentroid)


def test_tau_starts_at_ten_is_learned_and_gets_the_gradient_of_the_cross_entropy():
    model = MetaBaseline(nn.Flatten())
    assert isinstance(model.tau, nn.Parameter) and model.tau.item() == 10.0
    assert any(parameter is model.tau for parameter in model.configure_optimizers().param_groups[0]["params"])
    episode = tiny_episode()
    F.cross_entropy(model.episode_logits(episode), QUERY_LABELS).backward()
    # d/dtau of the mean CE of logits tau * c: mean over queries of sum_j (softmax_j - onehot_j) c_j
    probabilities = (10 * COSINES).softmax(dim=-1)
    expected = ((probabilities - F.one_hot(QUERY_LABELS, 2)) * COSINES).sum(dim=-1).mean()
    torch.testing.assert_close(model.tau.grad, expected)


def test_a_fixed_tau_is_a_buffer_outside_the_optimiser():
    model = MetaBaseline(nn.Flatten(), tau=5.0, learn_tau=False)
    assert "tau" in dict(model.named_buffers()) and not list(model.parameters())
    torch.testing.assert_close(model.episode_logits(tiny_episode()), 5 * COSINES)


def test_a_meta_batch_is_embedded_in_one_backbone_pass_with_each_episode_scored_alone():
    torch.manual_seed(0)
    model = MetaBaseline(Conv4(1, 16)).eval()  # eval: the features do not depend on the batch
    calls = []
    model.backbone.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    tasks = [
        Episode(
            torch.randn(5, 1, 28, 28),
            torch.arange(5),
            torch.randn(10, 1, 28, 28),
            torch.arange(5).repeat(2),
            torch.arange(5),
        )
        for _ in range(2)
    ]
    meta_batch = Episode(
        *(
            torch.stack([getattr(task, name) for task in tasks])
            for name in ("support_images", "support_labels", "query_images", "query_labels", "class_ids")
        )
    )
    together = model.training_logits(meta_batch, [meta_batch.task(t) for t in range(2)])
    assert calls == [30]
    for task, logits in zip(tasks, together):
        torch.testing.assert_close(logits, model.episode_logits(task), rtol=1e-5, atol=1e-5)


# ----- stage 2 from stage 1 ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def caltech32(data_root):
    dataset = Caltech101(image_size=32, download=False)
    dataset.prepare()
    return dataset


def trainer(steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def episodes(dataset, **kwargs) -> EpisodicDataModule:
    settings = dict(
        train=EpisodeSpec(5, 1, 2),
        evaluation=EpisodeSpec(5, 1, 2),
        train_episodes_per_epoch=2,
        val_episodes=1,
        test_episodes=1,
    )
    return EpisodicDataModule(dataset, **{**settings, **kwargs})


@pytest.fixture(scope="module")
def stage_one(caltech32, tmp_path_factory):
    """A Classifier-Baseline (Conv4 of 16 channels) trained 2 steps on real Caltech-101, and its checkpoint."""
    torch.manual_seed(0)
    model = ClassifierBaseline(Conv4(3, 16))
    run = trainer(2)
    run.fit(model, episodes(caltech32, pretrain_batch_size=16))
    path = tmp_path_factory.mktemp("stage1") / "last.ckpt"
    run.save_checkpoint(path)
    return model, path


class BackboneAtTrainStart(Callback):
    """The backbone's weights when training starts (after ``on_fit_start``), before any step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {key: value.clone() for key, value in pl_module.backbone.state_dict().items()}


def test_stage_two_starts_from_the_stage_one_backbone_and_meta_trains_it(caltech32, stage_one):
    stage_one_model, path = stage_one
    torch.manual_seed(1)  # other initial weights than stage 1's
    model = MetaBaseline(
        Conv4(3, 16),
        classifier_baseline_checkpoint=str(path),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    )
    start = BackboneAtTrainStart()
    trainer(2, callbacks=[start]).fit(model, episodes(caltech32, train_tasks_per_batch=2))
    expected = stage_one_model.backbone.state_dict()
    assert start.weights.keys() == expected.keys()
    assert all(torch.equal(start.weights[key], expected[key]) for key in expected)
    conv = "encoder.0.0.weight"
    assert not torch.equal(model.backbone.state_dict()[conv], expected[conv])  # then meta-trained
    assert model.tau.item() != 10.0


def test_stage_two_without_stage_one_weights_says_what_to_pass(caltech32):
    model = MetaBaseline(Conv4(3, 16))
    with pytest.raises(UserError, match="set `model.init_args.classifier_baseline_checkpoint` to the last.ckpt"):
        trainer(1).fit(model, episodes(caltech32))


def test_a_missing_stage_one_file_is_named(tmp_path):
    model = MetaBaseline(Conv4(3, 16), classifier_baseline_checkpoint=str(tmp_path / "none.ckpt"))
    with pytest.raises(UserError, match=r"no checkpoint file .*none\.ckpt\. Train stage 1 first"):
        model.load_classifier_baseline()


def test_a_stage_one_checkpoint_of_another_backbone_is_refused(stage_one):
    _, path = stage_one
    model = MetaBaseline(Conv4(3, 32), classifier_baseline_checkpoint=str(path))
    with pytest.raises(
        UserError,
        match="do not fit this backbone: pass the checkpoint of a run with the same backbone settings.*size mismatch",
    ):
        model.load_classifier_baseline()


def test_weights_from_a_meta_baseline_checkpoint_are_kept_when_fitting_starts(tmp_path):
    torch.manual_seed(0)
    trained = MetaBaseline(Conv4(3, 16), tau=7.0)
    model = MetaBaseline(Conv4(3, 16), classifier_baseline_checkpoint=str(tmp_path / "gone.ckpt"))
    restore_weights(model, {"state_dict": trained.state_dict()})  # as --weights_from and --ckpt_path do
    model.on_fit_start()  # no stage-1 file read
    assert model.tau.item() == 7.0
    assert torch.equal(model.backbone.encoder[0][0].weight, trained.backbone.encoder[0][0].weight)


@pytest.mark.parametrize("config", ["meta_baseline_stage1", "meta_baseline_5w1s", "meta_baseline_5w5s"])
def test_the_caltech_configs_use_the_reference_resnet12_widths(config):
    """yinboc/few-shot-meta-baseline's `resnet12` is 64-128-256-512 (640 wide is its `resnet12-wide`), with the
    same block as this project's ResNet12: three 3x3 conv-BN with leaky ReLU 0.1, a 1x1 conv-BN shortcut, max pool."""
    sections = load_config(REPO / "experiments" / "caltech101" / f"{config}.yaml")
    backbone = sections["model"]["init_args"]["backbone"]
    assert backbone["class_path"] == "fsl_lightning.backbones.ResNet12"
    built = ResNet12(**backbone["init_args"])
    assert [block.shortcut[0].out_channels for block in built.blocks] == [64, 128, 256, 512]
    assert built.out_features == 512
