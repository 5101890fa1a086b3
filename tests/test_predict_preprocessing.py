"""``predict`` on the very files of a test episode gives the test step's inputs and logits: one decoding for both."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import Caltech101, EpisodicDataModule, Omniglot
from fsl_lightning.data.datasets.caltech101 import repository_split
from fsl_lightning.episode import EpisodeSpec
from fsl_lightning.methods import ProtoNet

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = EpisodeSpec(way=5, shot=1, query=2)


def _first_test_episode(dataset):
    datamodule = EpisodicDataModule(dataset, evaluation=SPEC, test_episodes=1)
    datamodule.setup("test")
    datamodule.trainer = SimpleNamespace(state=SimpleNamespace(stage=RunningStage.TESTING), global_rank=0, world_size=1)
    return datamodule.on_after_batch_transfer(next(iter(datamodule.test_dataloader())), 0), datamodule.splits["test"]


def _write_episode_files(episode, classes, file_of, root: Path) -> tuple[Path, Path]:
    """The episode's files as a user would give them: support/<label>/..., queries/... (in query order)."""

    def source(index: int) -> tuple[Path | bytes, str]:
        class_id = int(torch.bucketize(torch.tensor(index), classes.class_offsets[1:], right=True))
        return file_of(classes.class_names[class_id], index - int(classes.class_offsets[class_id]))

    def copy(index: int, target: Path) -> None:
        data, _ = source(index)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data if isinstance(data, bytes) else Path(data).read_bytes())

    suffix = Path(source(int(episode.support_indices[0]))[1]).suffix
    for index, label in zip(episode.support_indices.tolist(), episode.support_labels.tolist()):
        copy(index, root / "support" / f"class{label:02d}" / f"image{index}{suffix}")
    for position, index in enumerate(episode.query_indices.tolist()):
        copy(index, root / "queries" / f"query{position:03d}{suffix}")
    return root / "support", root / "queries"


def _assert_predict_matches_test(dataset, file_of, tmp_path, channels):
    episode, classes = _first_test_episode(dataset)
    support_dir, query_dir = _write_episode_files(episode, classes, file_of, tmp_path)
    datamodule = EpisodicDataModule(dataset, predict_support_dir=str(support_dir), predict_query_dir=str(query_dir))
    predicted = datamodule.on_after_batch_transfer(next(iter(datamodule.predict_dataloader())), 0)["episode"]
    assert torch.equal(predicted.support_images, episode.support_images)
    assert torch.equal(predicted.query_images, episode.query_images)
    assert torch.equal(predicted.support_labels, episode.support_labels)
    torch.manual_seed(0)
    model = ProtoNet(Conv4(in_channels=channels, hidden_channels=16)).eval()
    with torch.no_grad():
        assert torch.equal(model.episode_logits(predicted), model.episode_logits(episode))


def test_predict_on_the_files_of_an_omniglot_test_episode_gives_its_inputs_and_logits(data_root, tmp_path):
    dataset = Omniglot(protocol="lake", image_size=32, download=False)
    archive = dataset.root / "images_evaluation.zip"

    def file_of(class_name: str, image: int) -> tuple[bytes, str]:
        import zipfile

        with zipfile.ZipFile(archive) as opened:
            folder = f"images_evaluation/{class_name}/"
            names = sorted(n for n in opened.namelist() if n.startswith(folder) and n.endswith(".png"))
            return opened.read(names[image]), names[image]

    _assert_predict_matches_test(dataset, file_of, tmp_path, channels=1)


@pytest.mark.slow
def test_predict_on_the_files_of_a_caltech101_test_episode_gives_its_inputs_and_logits(data_root, tmp_path):
    dataset = Caltech101(image_size=32, download=False)
    sources = dataset._sources_by_class(set(repository_split()["test"]))  # the decoding's own file order

    def file_of(class_name: str, image: int):
        return sources[class_name][image]

    _assert_predict_matches_test(dataset, file_of, tmp_path, channels=3)
