"""No code runs from a checkpoint or weights file, whoever wrote it: every load path refuses a file that holds a
pickled call (the standard way to hide code in a checkpoint) before the call runs, in one line that names the file
and what it held, without advising to turn the check off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsl_lightning.backbones import Conv4, TorchvisionBackbone
from fsl_lightning.backbones.torchvision_backbone import checkpoint_path, resolve_weights
from fsl_lightning.callbacks.time_budget import TimeBudgetSchedule
from fsl_lightning.checkpoint_io import AtomicCheckpointIO, UnsafeCheckpointError, load_checkpoint_file
from fsl_lightning.classifier import FewShotClassifier
from fsl_lightning.cli import main
from fsl_lightning.data.augment import BatchAugmentation
from fsl_lightning.data.decoded_cache import cached, read_cache_file
from fsl_lightning.methods import RFSDistill, RFSSimple
from fsl_lightning.methods.episode_classifiers import NearestCentroid
from fsl_lightning.run.weights_from import load_backbone_weights
from omniglot_folders import support_and_query_folders
from test_clip import tiny_clip
from test_timm_backbone import tiny_dinov2

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml")
TINY = [
    "--data.train.way=5",
    "--data.train_episodes_per_epoch=10",
    "--data.val_episodes=2",
    "--data.test_episodes=2",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
]


class CreatesMarker:
    """Unpickled, calls ``open(marker, "w")``: the file appears if, and only if, loading ran the call."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    """The last checkpoint of a 10-step ProtoNet run of the CLI."""
    out = tmp_path_factory.mktemp("fit")
    cli = main(
        [
            "fit",
            "--config",
            CONFIG,
            *TINY,
            "--trainer.max_steps=10",
            "--test_after_fit=false",
            f"--trainer.logger.init_args.save_dir={out}",
        ]
    )
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.fixture
def marker(tmp_path) -> Path:
    marker = tmp_path / "payload_ran"
    yield marker
    assert not marker.exists(), "loading the file ran the code hidden in it"


def with_payload(checkpoint: Path, marker: Path, path: Path, **save_options) -> Path:
    """``checkpoint``'s contents with one more entry, whose unpickling creates ``marker``."""
    contents = torch.load(checkpoint, map_location="cpu", weights_only=True)
    contents["extra"] = CreatesMarker(marker)
    torch.save(contents, path, **save_options)
    return path


@pytest.fixture
def evil(trained, marker, tmp_path) -> Path:
    return with_payload(trained, marker, tmp_path / "evil.ckpt")


def assert_refused_in_one_line(message: str, path: Path) -> None:
    assert message.startswith(f"Refused to load {path}: it holds `io.open`, beyond tensors and plain data"), message
    assert "\n" not in message.strip() and "weights_only=False" not in message and "trust" not in message


def test_the_projects_own_checkpoints_hold_nothing_beyond_tensors_and_plain_data(trained):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(trained)) == []
    assert load_checkpoint_file(trained)["global_step"] == 10


@pytest.mark.parametrize(
    "command",
    [
        ["fit", "--config", CONFIG, "--ckpt_path"],
        ["validate", "--ckpt_path"],
        ["test", "--ckpt_path"],
        ["predict", "--ckpt_path"],
        ["fit", "--config", CONFIG, "--weights_from"],
    ],
    ids=["fit-resume", "validate", "test", "predict", "weights_from"],
)
def test_every_command_refuses_a_payload_checkpoint_in_one_line(command, evil, marker, tmp_path, data_root):
    support, queries, _ = support_and_query_folders(data_root, tmp_path / "folders", 2, 1)
    predict_folders = [f"--data.predict_support_dir={support}", f"--data.predict_query_dir={queries}"]
    with pytest.raises(SystemExit) as ended:
        main(
            [
                *command,
                str(evil),
                *TINY,
                "--trainer.max_steps=1",
                f"--trainer.default_root_dir={tmp_path}",
                *(predict_folders if command[0] == "predict" else []),
            ]
        )
    assert str(ended.value.code).startswith("error: ")
    assert_refused_in_one_line(str(ended.value.code)[len("error: ") :], evil)


def test_the_process_exits_non_zero_with_one_line_on_stderr(evil, marker):
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    environment.pop("FSL_TRACEBACK", None)
    ended = subprocess.run(
        [sys.executable, "-m", "fsl_lightning", "test", "--ckpt_path", str(evil)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert ended.returncode == 1 and "Traceback" not in ended.stderr
    last = ended.stderr.strip().splitlines()[-1]
    assert_refused_in_one_line(last[len("error: ") :], evil)


def test_lightnings_own_load_reads_weights_only_whatever_it_is_asked(evil, marker):
    """The Trainer restores through the checkpoint IO plugin, which Lightning may call with weights_only=False."""
    with pytest.raises(UnsafeCheckpointError) as refused:
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert_refused_in_one_line(str(refused.value), evil)


def test_an_old_format_payload_file_is_refused_too(trained, marker, tmp_path):
    legacy = with_payload(trained, marker, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as refused:
        FewShotClassifier.from_checkpoint(legacy)
    assert_refused_in_one_line(str(refused.value), legacy)


def test_the_python_api_refuses_a_payload_checkpoint(evil, marker):
    with pytest.raises(UnsafeCheckpointError) as refused:
        FewShotClassifier.from_checkpoint(evil)
    assert_refused_in_one_line(str(refused.value), evil)


def test_backbone_and_teacher_checkpoints_refuse_a_payload(evil, marker):
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_backbone_weights(Conv4(in_channels=1), evil, "backbone_checkpoint", "Run the pre-training first.")
    assert_refused_in_one_line(str(refused.value), evil)
    student = RFSDistill(Conv4(in_channels=1), num_base_classes=4, feature_dim=64, teacher_checkpoint=str(evil))
    with pytest.raises(UnsafeCheckpointError) as refused:
        student._load_teacher()
    assert_refused_in_one_line(str(refused.value), evil)


def test_pretrained_weight_files_refuse_a_payload(marker, tmp_path):
    resnet = tmp_path / "resnet18.pth"
    torch.save({**TorchvisionBackbone("resnet18", weights=None).model.state_dict(), "x": CreatesMarker(marker)}, resnet)
    dinov2 = tmp_path / "dinov2.pth"
    torch.save({**tiny_dinov2().model.state_dict(), "x": CreatesMarker(marker)}, dinov2)
    clip = tmp_path / "clip.bin"
    torch.save({**tiny_clip().model.state_dict(), "x": CreatesMarker(marker)}, clip)
    loads = {
        resnet: lambda: TorchvisionBackbone("resnet18", weights=None, weights_path=str(resnet)),
        dinov2: lambda: tiny_dinov2(weights_path=str(dinov2)),
        clip: lambda: tiny_clip(weights_path=str(clip)),
    }
    for path, load in loads.items():
        with pytest.raises(UnsafeCheckpointError) as refused:
            load()
        assert_refused_in_one_line(str(refused.value), path)


def test_a_payload_put_in_the_torch_hub_cache_is_refused(marker, tmp_path, monkeypatch):
    """torchvision's weights are read from torch.hub's cache without checking their hash once downloaded; the
    offline advice asks users to copy the file there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights = resolve_weights("resnet18", "IMAGENET1K_V1")
    cached_file = Path(checkpoint_path(weights))
    cached_file.parent.mkdir(parents=True)
    torch.save({"x": CreatesMarker(marker)}, cached_file)
    with pytest.raises(UnsafeCheckpointError) as refused:
        TorchvisionBackbone("resnet18", weights="IMAGENET1K_V1")
    assert_refused_in_one_line(str(refused.value), cached_file)


def test_a_cache_file_with_a_payload_is_rebuilt_never_run(marker, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FSL_CACHE_DIR", str(tmp_path / "cache"))
    assert cached("split", ("source", 1), lambda: {"images": torch.arange(3)})["images"].tolist() == [0, 1, 2]
    (cache_file,) = (tmp_path / "cache").rglob("split.pt")
    torch.save({"stamp": ["source", 1], "payload": CreatesMarker(marker)}, cache_file)
    assert read_cache_file(cache_file) is None
    assert "Rebuilding the cache file" in caplog.text and "it holds `io.open`" in caplog.text
    assert cached("split", ("source", 1), lambda: {"images": torch.arange(2)})["images"].tolist() == [0, 1]
    assert read_cache_file(cache_file)["payload"]["images"].tolist() == [0, 1]  # replaced by the rebuilt one


def test_a_checkpoint_of_the_first_time_budget_still_resumes_with_its_plan():
    budget = TimeBudgetSchedule()
    budget.load_state_dict({"planned_steps": 8000, "plan_step": 70, "configured_steps": 8000})
    assert budget.planned_steps == 8000 and budget.plan_changes == [(70, 8000)]


def test_a_method_built_in_python_keeps_no_live_object_in_its_checkpoint_hyperparameters(tmp_path):
    """Objects given as arguments (an episode classifier, an augmentation) would be pickled into every checkpoint
    Lightning writes (``hyper_parameters``), which ``weights_only`` would then refuse to load."""
    method = RFSSimple(
        Conv4(in_channels=3),
        num_base_classes=4,
        feature_dim=64,
        episode_classifier=NearestCentroid(),
        support_augmentation=BatchAugmentation(),
    )
    assert "episode_classifier" not in method.hparams and "support_augmentation" not in method.hparams
    assert method.hparams["num_base_classes"] == 4 and method.hparams["augmented_support_copies"] == 5
    torch.save({"hyper_parameters": dict(method.hparams), "state_dict": method.state_dict()}, tmp_path / "m.ckpt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "m.ckpt")) == []
