"""Every method's ``fit_support`` / ``score`` split: the same numbers as before it, the episode's logits from a
fitted support set, and queries scored in parts as together (unless the method is transductive)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import Episode, SupportSet
from fsl_lightning.methods import METHODS, FewShotMethod
from method_zoo import (
    BUILDERS,
    RGB_METHODS,
    SPEC,
    build,
    episode_of,
    load_episodes,
)

pytestmark = pytest.mark.usefixtures("one_thread")
GRAY_METHODS = sorted(set(METHODS) - RGB_METHODS)


@pytest.fixture(scope="module")
def episodes(data_root):
    return load_episodes()


def test_the_zoo_builds_every_registered_method():
    assert set(BUILDERS) == set(METHODS)
    assert {name: type(build(name)) for name in METHODS} == METHODS


def fitted_and_scored(method: FewShotMethod, episode: Episode, class_names: list[str] | None = None) -> dict:
    """In eval mode, under inference mode (as Lightning's loops): the episode's logits, the queries scored against
    ``fit_support`` of the support set all together, and in two parts (the first 4 queries, then the rest)."""
    method.eval()
    with torch.inference_mode():
        state = method.fit_support(SupportSet.of(episode, class_names))
        queries, indices = episode.query_images, episode.query_indices
        parts = [method.score(state, queries[:4], indices[:4]), method.score(state, queries[4:], indices[4:])]
        return {
            "episode": method.episode_logits(episode),
            "together": method.score(state, queries, indices),
            "in_parts": torch.cat(parts),
        }


def assert_split_consistent(method: FewShotMethod, results: dict) -> None:
    # Support and queries are embedded in one backbone batch by episode_logits, apart by fit_support and score:
    # in eval mode the same features but for the rounding of batched convolutions.
    torch.testing.assert_close(results["together"], results["episode"], rtol=1e-5, atol=1e-5)
    if method.transductive:  # the flag is honest: the queries scored with others change the logits
        assert not torch.allclose(results["in_parts"], results["together"], rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(results["in_parts"], results["together"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", GRAY_METHODS)
def test_scoring_a_fitted_support_set_gives_the_episode_logits(name, episodes):
    method = build(name)
    episode, _ = episode_of(name, episodes)
    assert_split_consistent(method, fitted_and_scored(method, episode))


class FitThenScoreInTheTestLoop(Callback):
    """Runs :func:`fitted_and_scored` on each test episode inside Lightning's test loop, where CLIP names the
    episode's classes from the evaluated split."""

    def __init__(self) -> None:
        self.results: list[dict] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.results.append(fitted_and_scored(pl_module, batch))


@pytest.mark.parametrize("name", sorted(RGB_METHODS))
def test_clip_scores_a_fitted_support_set_as_its_test_episodes(name, caltech_subset32, tmp_path):
    method, check = build(name), FitThenScoreInTheTestLoop()
    datamodule = EpisodicDataModule(caltech_subset32, evaluation=SPEC, test_episodes=2)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[check],
    )
    trainer.test(method, datamodule=datamodule, verbose=False)
    assert len(check.results) == 2
    for results in check.results:
        assert_split_consistent(method, results)


def test_the_maml_flag_follows_its_batch_norm():
    assert build("MAML").transductive and build("ANIL").transductive  # batch statistics of the queries, as the paper
    assert not build("FOMAML").transductive and not build("Reptile").transductive  # running averages
    assert not build("ProtoNet").transductive and not build("Baseline").transductive
