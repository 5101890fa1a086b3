"""Episode sampling and the data module: contents, label mapping, determinism, rank sharding, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage

from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.data.sampler import episode_generator, sample_episode
from fsl_lightning.episode import Episode, EpisodeSpec
from fsl_lightning.run.errors import UserError

SPEC = EpisodeSpec(way=5, shot=2, query=3)


def make_datamodule(omniglot, **kwargs):
    arguments = dict(train=SPEC, evaluation=SPEC, val_episodes=10, test_episodes=10)
    arguments.update(kwargs)
    datamodule = EpisodicDataModule(omniglot, **arguments)
    datamodule.setup("fit")
    datamodule.setup("test")
    return datamodule


def attach_trainer(datamodule, stage, rank=0, world=1, step=0):
    datamodule.trainer = SimpleNamespace(
        state=SimpleNamespace(stage=stage),
        global_rank=rank,
        world_size=world,
        global_step=step,
        accumulate_grad_batches=1,
    )


def episodes_of(loader, datamodule):
    return [datamodule.on_after_batch_transfer(batch, 0) for batch in loader]


def test_episode_has_the_right_classes_counts_and_labels(omniglot, vinyals_test_split):
    datamodule = make_datamodule(omniglot)
    attach_trainer(datamodule, RunningStage.TESTING)
    classes = vinyals_test_split
    for episode in episodes_of(datamodule.test_dataloader(), datamodule):
        assert episode.support_images.shape == (5 * 2, 1, 28, 28)
        assert episode.query_images.shape == (5 * 3, 1, 28, 28)
        assert torch.equal(episode.support_labels, torch.arange(5).repeat_interleave(2))
        assert torch.equal(episode.query_labels, torch.arange(5).repeat_interleave(3))
        assert len(set(episode.class_ids.tolist())) == 5
        assert episode.support_images.dtype == torch.float32 and 0 <= episode.support_images.min()
        assert episode.support_images.max() <= 1
        for label, class_id in enumerate(episode.class_ids.tolist()):
            # every image with label i is one of class_ids[i]'s 20 images
            pool = classes.images[classes.class_offsets[class_id] : classes.class_offsets[class_id + 1]]
            pool = pool.float() / 255
            for image in torch.cat(
                [
                    episode.support_images[episode.support_labels == label],
                    episode.query_images[episode.query_labels == label],
                ]
            ):
                assert (pool == image).flatten(1).all(1).any()


def test_episode_indices_point_at_its_images_in_the_split(omniglot, vinyals_test_split):
    datamodule = make_datamodule(omniglot)
    attach_trainer(datamodule, RunningStage.TESTING)
    images = vinyals_test_split.images.float() / 255
    episode = episodes_of(datamodule.test_dataloader(), datamodule)[0]
    assert torch.equal(images[episode.support_indices], episode.support_images)
    assert torch.equal(images[episode.query_indices], episode.query_images)
    offsets = vinyals_test_split.class_offsets
    classes_of_queries = torch.bucketize(episode.query_indices, offsets[1:], right=True)
    assert torch.equal(classes_of_queries, episode.class_ids[episode.query_labels])


def test_support_and_query_never_share_an_image():
    offsets = torch.arange(0, 21 * 50, 21)  # 49 classes of 21 images
    for key in range(50):
        indices, _ = sample_episode(offsets, EpisodeSpec(5, 5, 16), episode_generator(0, 0, key))
        assert indices.unique().numel() == indices.numel() == 5 * 21


def test_classes_with_fewer_images_are_sampled_within_their_range():
    counts = torch.tensor([3, 10, 4, 7])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    for key in range(100):
        indices, class_ids = sample_episode(offsets, EpisodeSpec(4, 1, 2), episode_generator(0, 0, key))
        for row, class_id in zip(indices, class_ids):
            assert (row >= offsets[class_id]).all() and (row < offsets[class_id + 1]).all()


def test_evaluation_episodes_are_fixed_across_runs_and_training_seeds(omniglot):
    first, second = make_datamodule(omniglot, seed=1), make_datamodule(omniglot, seed=2)
    for datamodule in (first, second):
        attach_trainer(datamodule, RunningStage.TESTING)
    a = [idx for idx, *_ in first.test_dataloader()]
    b = [idx for idx, *_ in second.test_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 10
    assert not torch.equal(a[0], a[1])
    val = [idx for idx, *_ in first.val_dataloader()]
    assert not torch.equal(val[0], a[0]), "validation and test episodes must differ"


def test_ranks_split_the_evaluation_episodes_exactly(omniglot):
    datamodule = make_datamodule(omniglot, test_episodes=11)
    attach_trainer(datamodule, RunningStage.TESTING)
    single = [idx for idx, *_ in datamodule.test_dataloader()]
    shards = []
    for rank in range(2):
        attach_trainer(datamodule, RunningStage.TESTING, rank=rank, world=2)
        shards.append([idx for idx, *_ in datamodule.test_dataloader()])
    assert len(shards[0]) == 6 and len(shards[1]) == 5
    merged = [shards[k % 2][k // 2] for k in range(11)]
    assert all(torch.equal(x, y) for x, y in zip(single, merged))


def test_training_stream_is_distinct_per_rank_and_resumes_at_the_step(omniglot):
    datamodule = make_datamodule(omniglot, train_episodes_per_epoch=4)
    attach_trainer(datamodule, RunningStage.TRAINING, rank=0, world=2)
    rank0 = [idx for idx, *_ in datamodule.train_dataloader()]
    attach_trainer(datamodule, RunningStage.TRAINING, rank=1, world=2)
    rank1 = [idx for idx, *_ in datamodule.train_dataloader()]
    assert not any(torch.equal(x, y) for x, y in zip(rank0, rank1))
    attach_trainer(datamodule, RunningStage.TRAINING, rank=0, world=2, step=2)
    resumed = [idx for idx, *_ in datamodule.train_dataloader()]
    assert torch.equal(resumed[0], rank0[2]) and torch.equal(resumed[1], rank0[3])


def test_way_larger_than_the_classes_is_refused(omniglot):
    with pytest.raises(
        UserError,
        match=r"Training episodes are 5000-way, but the train split has only 4112 classes: "
        r"set --data.train.way to at most 4112",
    ):
        make_datamodule(omniglot, train=EpisodeSpec(way=5000, shot=1, query=1))


def test_shot_plus_query_larger_than_the_images_per_class_is_refused(omniglot):
    with pytest.raises(
        UserError,
        match=r"Evaluation episodes \(validation\) take shot=5 \+ query=16 = 21 images per "
        r"class.*only 20: lower --data.evaluation.shot and --data.evaluation.query",
    ):
        make_datamodule(omniglot, evaluation=EpisodeSpec(way=5, shot=5, query=16))


def test_degenerate_episode_spec_is_refused():
    with pytest.raises(UserError, match="way >= 2, got way=1"):
        EpisodeSpec(way=1, shot=1, query=1)
    with pytest.raises(UserError, match="shot >= 1, got shot=0"):
        EpisodeSpec(way=5, shot=0, query=1)


def test_meta_batches_stack_distinct_tasks_with_a_leading_dimension(omniglot):
    datamodule = make_datamodule(omniglot, train_tasks_per_batch=4, train_episodes_per_epoch=3)
    attach_trainer(datamodule, RunningStage.TRAINING)
    episodes = episodes_of(datamodule.train_dataloader(), datamodule)
    assert len(episodes) == 3
    episode = episodes[0]
    assert episode.num_tasks == 4 and episode.way == 5
    assert episode.support_images.shape == (4, 10, 1, 28, 28) and episode.query_images.shape == (4, 15, 1, 28, 28)
    assert torch.equal(episode.support_labels[2], torch.arange(5).repeat_interleave(2))
    assert not torch.equal(episode.class_ids[0], episode.class_ids[1])
    single = episode.task(1)
    assert single.num_tasks is None and single.support_images.shape == (10, 1, 28, 28)


def test_evaluation_within_group_draws_all_classes_from_one_alphabet(omniglot, vinyals_test_split):
    spec = EpisodeSpec(way=20, shot=1, query=1)
    datamodule = make_datamodule(omniglot, evaluation=spec, evaluation_within_group=True, test_episodes=30)
    attach_trainer(datamodule, RunningStage.TESTING)
    names = vinyals_test_split.class_names
    alphabets_seen = set()
    for _, class_ids, _ in datamodule.test_dataloader():
        alphabets = {names[c].split("/")[0] for c in class_ids.tolist()}
        assert len(alphabets) == 1 and len(set(class_ids.tolist())) == 20
        alphabets_seen |= alphabets
    assert len(alphabets_seen) > 3  # the alphabet itself is drawn per episode


def test_evaluation_within_group_refuses_a_way_larger_than_every_alphabet(omniglot):
    with pytest.raises(ValueError, match=r"within one group.*largest group of the val split has \d+"):
        make_datamodule(omniglot, evaluation=EpisodeSpec(way=1000, shot=1, query=1), evaluation_within_group=True)


def test_meta_batch_size_below_one_is_refused(omniglot):
    with pytest.raises(ValueError, match="train_tasks_per_batch must be at least 1, got 0"):
        EpisodicDataModule(omniglot, train_tasks_per_batch=0)


def test_evaluation_within_group_needs_a_dataset_with_groups(omniglot):
    from dataclasses import replace

    class Ungrouped(type(omniglot)):
        def load_split(self, split):
            return replace(super().load_split(split), class_groups=None)

    dataset = Ungrouped(download=False)
    with pytest.raises(
        ValueError, match="evaluation_within_group needs class groups.*set evaluation_within_group: false"
    ):
        make_datamodule(dataset, evaluation_within_group=True)


def test_evaluation_episodes_carry_a_seed_that_depends_only_on_their_key(omniglot):
    """Episode.seed: a pure function of (eval_seed, split, key), the same on any rank layout; None in training."""
    datamodule = make_datamodule(omniglot, test_episodes=5, seed=1)
    attach_trainer(datamodule, RunningStage.TESTING)
    single = [episode.seed for episode in episodes_of(datamodule.test_dataloader(), datamodule)]
    assert all(isinstance(seed, int) for seed in single) and len(set(single)) == 5
    attach_trainer(datamodule, RunningStage.TESTING, rank=1, world=2)
    assert [e.seed for e in episodes_of(datamodule.test_dataloader(), datamodule)] == single[1::2]
    other_training_seed = make_datamodule(omniglot, test_episodes=5, seed=2)
    attach_trainer(other_training_seed, RunningStage.TESTING)
    assert [e.seed for e in episodes_of(other_training_seed.test_dataloader(), other_training_seed)] == single
    attach_trainer(datamodule, RunningStage.VALIDATING)
    validation = [episode.seed for episode in episodes_of(datamodule.val_dataloader(), datamodule)]
    assert not set(validation[:5]) & set(single), "validation and test episodes need their own seeds"
    other_eval_seed = make_datamodule(omniglot, test_episodes=5, eval_seed=1)
    attach_trainer(other_eval_seed, RunningStage.TESTING)
    assert episodes_of(other_eval_seed.test_dataloader(), other_eval_seed)[0].seed != single[0]
    attach_trainer(datamodule, RunningStage.TRAINING)
    assert episodes_of(datamodule.train_dataloader(), datamodule)[0].seed is None


def test_episode_map_task_and_to_keep_the_seed():
    images = torch.rand(2, 4, 1, 3, 3)
    batch = Episode(
        images,
        torch.zeros(2, 4, dtype=torch.long),
        images,
        torch.zeros(2, 4, dtype=torch.long),
        torch.zeros(2, 2, dtype=torch.long),
        seed=7,
    )
    assert batch.task(1).seed == 7 and batch.to("cpu").seed == 7 and batch.map(torch.clone).seed == 7
    assert batch.task(1).support_indices is None


def test_joined_splits_keep_each_class_whole_and_their_groups_apart():
    from fsl_lightning.data.datasets.base import ClassImages

    def split(sizes, first_value, groups):
        images = [
            torch.full((size, 1, 2, 2), first_value + index, dtype=torch.uint8) for index, size in enumerate(sizes)
        ]
        return ClassImages.from_groups(images, [f"c{first_value + i}" for i in range(len(sizes))], torch.tensor(groups))

    joined = split([2, 3], 0, [0, 1]).joined_with(split([4], 10, [0]))
    assert joined.class_offsets.tolist() == [0, 2, 5, 9]
    assert joined.class_names == ["c0", "c1", "c10"]
    assert joined.class_groups.tolist() == [0, 1, 2]  # the second split's alphabet 0 is not the first's
    for index, value in enumerate([0, 1, 10]):
        start, end = joined.class_offsets[index], joined.class_offsets[index + 1]
        assert (joined.images[start:end] == value).all()


def test_training_on_the_validation_classes_too_trains_on_both_and_validates_on_none(omniglot):
    plain = EpisodicDataModule(omniglot, train=SPEC, evaluation=SPEC)
    plain.setup("fit")
    joined = EpisodicDataModule(omniglot, train=SPEC, evaluation=SPEC, train_on_val_classes=True, val_episodes=0)
    joined.setup("fit")
    assert joined.num_train_classes == plain.num_train_classes + plain.splits["val"].num_classes
    assert joined.splits["train"].class_names == plain.splits["train"].class_names + plain.splits["val"].class_names
    assert "val" not in joined.splits and len(joined.val_dataloader()) == 0
    with pytest.raises(UserError, match=r"val_episodes: 0"):
        EpisodicDataModule(omniglot, train=SPEC, evaluation=SPEC, train_on_val_classes=True).setup("fit")
    with pytest.raises(UserError, match=r"--data.val_episodes=200"):
        EpisodicDataModule(omniglot, train=SPEC, evaluation=SPEC, val_episodes=0).setup("validate")


def test_a_training_shot_range_draws_each_batch_its_shot_and_keeps_the_images_per_class(omniglot):
    """R2D2's episodes (bertinetto/r2d2): 10 images per class, the shot drawn in 1..9 per batch, the rest queries."""
    spec = EpisodeSpec(way=5, shot=1, query=9)
    datamodule = make_datamodule(omniglot, train=spec, train_shot_range=(1, 9), train_episodes_per_epoch=60)
    attach_trainer(datamodule, RunningStage.TRAINING)
    episodes = episodes_of(datamodule.train_dataloader(), datamodule)
    shots = [len(episode.support_labels) // 5 for episode in episodes]
    assert set(shots) == set(range(1, 10))  # 60 draws over 9 values: all of them (a fixed shot would give one)
    for episode, shot in zip(episodes, shots):
        assert len(episode.query_labels) == 5 * (10 - shot)
        assert torch.equal(episode.support_labels, torch.arange(5).repeat_interleave(shot))
    again = [datamodule.training_batch(key, torch.device("cpu")) for key in range(5)]
    assert [len(episode.support_labels) // 5 for episode in again] == shots[:5]  # a pure function of the batch key
    datamodule.trainer.state.stage = RunningStage.VALIDATING
    validation = episodes_of(datamodule.val_dataloader(), datamodule)
    assert {len(episode.support_labels) for episode in validation} == {5 * SPEC.shot}  # evaluation keeps its spec


def test_a_training_shot_range_beyond_the_images_per_class_is_refused(omniglot):
    with pytest.raises(UserError, match=r"train_shot_range \[1, 10\] must satisfy .* \(= 10 images per class"):
        make_datamodule(omniglot, train=EpisodeSpec(way=5, shot=1, query=9), train_shot_range=(1, 10))
