"""The Python API for prediction (``FewShotClassifier``): the CLI's ``predict`` results, from one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from fsl_lightning.backbones import Conv4
from fsl_lightning.callbacks.prediction_writer import PredictionCSVWriter
from fsl_lightning.classifier import FewShotClassifier, Prediction
from fsl_lightning.cli import main
from fsl_lightning.data import EpisodicDataModule, Omniglot
from fsl_lightning.methods import NearestNeighbour, ProtoNet
from fsl_lightning.run.errors import UserError
from omniglot_folders import support_and_query_folders

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments" / "omniglot"
TINY_FIT = [
    "--data.train.way=5",
    "--data.train_episodes_per_epoch=10",
    "--data.val_episodes=2",
    "--trainer.max_steps=10",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--test_after_fit=false",
    "--trainer.log_every_n_steps=5",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_root) -> Path:
    """A ProtoNet trained for a few steps at 28x28 (Vinyals protocol), by the CLI."""
    out = tmp_path_factory.mktemp("fit")
    cli = main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "protonet_5w1s.yaml"),
            *TINY_FIT,
            f"--trainer.logger.init_args.save_dir={out}",
        ]
    )
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, data_root):
    """6 real Omniglot evaluation characters: one support image each, 3 queries each."""
    support, queries, _ = support_and_query_folders(data_root, tmp_path_factory.mktemp("folders"), 6, 3)
    return support, queries


@pytest.fixture
def no_training_data(tmp_path, monkeypatch):
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("FSL_DATA_ROOT", str(empty))
    return empty


def test_the_api_writes_the_csv_of_the_cli_predict_without_training_data(
    checkpoint, folders, tmp_path, no_training_data
):
    support, queries = folders
    cli_csv, api_csv = tmp_path / "cli.csv", tmp_path / "api.csv"
    # 4 queries per step: the API batches queries as the CLI does
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fsl_lightning",
            "predict",
            "--ckpt_path",
            str(checkpoint),
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            "--data.predict_batch_size=4",
            f"--prediction_writer.output_path={cli_csv}",
            "--trainer.logger=false",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
        ],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    classifier = FewShotClassifier.from_checkpoint(checkpoint, batch_size=4).fit_support(support)
    classifier.predict_to_csv(queries, api_csv)
    assert api_csv.read_text() == cli_csv.read_text()
    assert len(api_csv.read_text().splitlines()) == 1 + 18


def test_predictions_of_files_and_of_tensors_agree_with_the_folders(checkpoint, folders, no_training_data):
    support, queries = folders
    classifier = FewShotClassifier.from_checkpoint(checkpoint).fit_support(support)
    assert not classifier.method.training and classifier.device == torch.device("cpu")
    from_folder = classifier.predict(queries)
    files = sorted(str(path) for path in queries.iterdir())
    assert [prediction.file for prediction in from_folder] == files
    assert classifier.score_name == "probability" and all(0 < p.score <= 1 for p in from_folder)

    assert classifier.predict(files) == from_folder
    pixels = torch.stack([classifier.dataset.decode_image(Path(file), file) for file in files])
    unnamed = [Prediction(None, p.class_name, p.score, p.outlier) for p in from_folder]
    assert classifier.predict(pixels) == unnamed  # uint8 [N, 1, 28, 28]
    assert classifier.predict(pixels.float() / 255) == unnamed  # floats in [0, 1]
    alone = classifier.predict(files[3])  # a batch of one: the same up to the rounding of batched convolutions
    assert [(p.file, p.class_name) for p in alone] == [(p.file, p.class_name) for p in from_folder[3:4]]
    assert alone[0].score == pytest.approx(from_folder[3].score, abs=1e-6)

    by_class = {folder.name: sorted(folder.iterdir()) for folder in sorted(support.iterdir())}
    assert classifier.fit_support(by_class).predict(queries) == from_folder
    decode = classifier.dataset.decode_image
    decoded = {name: [decode(path, str(path)) for path in paths] for name, paths in by_class.items()}
    assert classifier.fit_support(decoded).predict(queries) == from_folder
    names, images = list(decoded), torch.stack([images[0] for images in decoded.values()])  # one image per class
    labels = list(range(len(names)))
    assert classifier.fit_support(images, labels, class_names=names).predict(queries) == from_folder


class CountsEmbeddedImages:
    """The number of images a method embedded (its real ``embed``, counted; a hook on the backbone would not see
    the evaluation copy that test and predict run)."""

    def __init__(self, method) -> None:
        self.images = 0
        embed = method.embed

        def counted(images):
            self.images += len(images)
            return embed(images)

        method.embed = counted


def test_the_api_fits_the_support_set_once_and_scores_query_batches_against_it(checkpoint, folders, no_training_data):
    support, queries = folders  # 6 support images, 18 queries
    classifier = FewShotClassifier.from_checkpoint(checkpoint, batch_size=4)
    embedded = CountsEmbeddedImages(classifier.method)
    classifier.fit_support(support)
    assert embedded.images == 6
    in_batches = classifier.predict(queries)  # 5 batches: the queries only, no support image again
    assert embedded.images == 6 + 18
    classifier.predict(sorted(queries.iterdir())[:3])
    assert embedded.images == 6 + 18 + 3
    at_once = FewShotClassifier.from_checkpoint(checkpoint).fit_support(support).predict(queries)
    assert [p.class_name for p in in_batches] == [p.class_name for p in at_once]
    assert [p.score for p in in_batches] == pytest.approx([p.score for p in at_once], abs=1e-6)


def test_predict_fits_the_support_folder_once_for_all_its_batches(checkpoint, folders, tmp_path, no_training_data):
    support, queries = folders
    method = FewShotClassifier.from_checkpoint(checkpoint).method
    embedded = CountsEmbeddedImages(method)
    datamodule = EpisodicDataModule(
        Omniglot(protocol="vinyals"),
        predict_support_dir=str(support),
        predict_query_dir=str(queries),
        predict_batch_size=4,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[PredictionCSVWriter(str(tmp_path / "cli.csv"))],
    )
    trainer.predict(method, datamodule=datamodule, return_predictions=False)
    assert embedded.images == 6 + 18  # not 6 per batch of 4 queries
    FewShotClassifier.from_checkpoint(checkpoint, batch_size=4).fit_support(support).predict_to_csv(
        queries, tmp_path / "api.csv"
    )
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "api.csv").read_text()


def test_nearest_neighbour_needs_no_checkpoint_and_gives_the_cli_distances(folders, tmp_path, no_training_data):
    support, queries = folders
    config = EXPERIMENTS / "nn1_20w1s.yaml"  # pixel-space 1-NN at 105x105 (Lake's protocol)
    main(
        [
            "predict",
            "--config",
            str(config),
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--data.predict_support_dir={support}",
            f"--data.predict_query_dir={queries}",
            f"--prediction_writer.output_path={tmp_path / 'cli.csv'}",
        ]
    )
    classifier = FewShotClassifier.from_config(config).fit_support(support)
    classifier.predict_to_csv(queries, tmp_path / "api.csv")
    assert (tmp_path / "api.csv").read_text() == (tmp_path / "cli.csv").read_text()
    assert classifier.score_name == "distance"

    built = FewShotClassifier(NearestNeighbour(nn.Flatten()), Omniglot(protocol="lake")).fit_support(support)
    assert built.predict(queries) == classifier.predict(queries)


def test_a_method_that_needs_training_is_refused_without_trained_weights(no_training_data):
    refusal = r"^ProtoNet has no trained weights to predict with: use FewShotClassifier\.from_checkpoint"
    with pytest.raises(UserError, match=refusal):
        FewShotClassifier(ProtoNet(Conv4(in_channels=1)), Omniglot(protocol="vinyals"))
    with pytest.raises(UserError, match=refusal):
        FewShotClassifier.from_config(EXPERIMENTS / "protonet_5w1s.yaml")


def test_user_mistakes_get_one_line_saying_what_to_do(checkpoint, folders, no_training_data):
    support, queries = folders
    classifier = FewShotClassifier.from_checkpoint(checkpoint)
    with pytest.raises(UserError, match=r"^Call fit_support\(.*\) before predict"):
        classifier.predict(queries)
    classifier.fit_support(support)
    with pytest.raises(UserError, match=r"uint8 \[2, 1, 105, 105\]; the model takes \[N, 1, 28, 28\]"):
        classifier.predict(torch.zeros(2, 1, 105, 105, dtype=torch.uint8))
    with pytest.raises(UserError, match=r"^No image file .*missing\.png: it does not exist"):
        classifier.predict([queries / "missing.png"], bad_images="stop")
    with pytest.raises(UserError, match=r"^None of the 1 query image can be used: No image file .*missing\.png"):
        classifier.predict([queries / "missing.png"])
    with pytest.raises(UserError, match=r"^bad_images='ignore': use `skip` .* or `stop`"):
        classifier.predict(queries, bad_images="ignore")
    with pytest.raises(UserError, match=r"^fit_support needs at least 2 classes to choose from, got 1"):
        classifier.fit_support({"only": [next(queries.iterdir())]})
    pixels = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(UserError, match=r"^fit_support\(images\) needs the label of each image"):
        classifier.fit_support(pixels)
    with pytest.raises(UserError, match=r"^fit_support got 3 images and labels \[0, 2, 2\]: give one label per"):
        classifier.fit_support(pixels, [0, 2, 2])
    with pytest.raises(UserError, match=r"^fit_support got 1 class names for 2 classes"):
        classifier.fit_support(pixels, [0, 1, 1], class_names=["a"])


def test_a_checkpoint_without_its_training_settings_or_a_truncated_one_is_named(tmp_path):
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, bare)
    with pytest.raises(UserError, match=r"bare\.ckpt does not hold the settings of its training .* trained=True"):
        FewShotClassifier.from_checkpoint(bare)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(bare.read_bytes()[:100])
    with pytest.raises(UserError, match=r"^Checkpoint .*truncated\.ckpt is truncated or corrupt"):
        FewShotClassifier.from_checkpoint(truncated)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_classifier_runs_on_the_device_it_is_given(checkpoint, folders, no_training_data):
    support, queries = folders
    on_cpu = FewShotClassifier.from_checkpoint(checkpoint).fit_support(support).predict(queries)
    on_gpu = FewShotClassifier.from_checkpoint(checkpoint, device="cuda").fit_support(support).predict(queries)
    assert next(FewShotClassifier.from_checkpoint(checkpoint, device="cuda").method.parameters()).is_cuda
    assert [p.class_name for p in on_gpu] == [p.class_name for p in on_cpu]
    assert [p.score for p in on_gpu] == pytest.approx([p.score for p in on_cpu], abs=1e-3)
