"""CLIP through open_clip: a small model of the real ViT-B-32 architecture with random weights and the real tokenizer,
offline, on CPU; zero-shot and few-shot on real Caltech-101 episodes, weights files, offline errors and predict."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from fsl_lightning.backbones.clip_backbone import CLIPBackbone
from fsl_lightning.backbones.torchvision_backbone import PretrainedWeightsUnavailableError
from fsl_lightning.cli import main
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import Episode, EpisodeSpec
from fsl_lightning.methods import CLIPFewShot, CLIPZeroShot
from fsl_lightning.methods.clip import (
    ensemble_text_features,
    mix_log_probabilities,
    prompt_templates,
    prompts_for,
    readable_class_name,
    top_k_accuracy,
)
from fsl_lightning.methods.episode_classifiers import LogisticRegression, NearestCentroid

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments" / "caltech101"
#: ViT-B-32's architecture (towers, projections, tokenizer and its 49408-token vocabulary) at 32 pixels, with
#: towers 2 blocks deep and 64 wide, so that the whole model runs in milliseconds.
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"width": 64, "heads": 2, "layers": 2},
}
TINY_YAML = """
model:
  init_args:
    backbone:
      init_args:
        pretrained: null
        model_config:
          embed_dim: 32
          vision_cfg: {image_size: 32, patch_size: 8, width: 64, layers: 2, head_width: 32}
          text_cfg: {width: 64, heads: 2, layers: 2}
data:
  dataset:
    init_args:
      image_size: 32
"""
START_OF_TEXT, END_OF_TEXT = 49406, 49407
pytestmark = pytest.mark.usefixtures("one_thread", "offline_hubs")


def tiny_clip(**kwargs) -> CLIPBackbone:
    torch.manual_seed(0)
    return CLIPBackbone("ViT-B-32", **{"pretrained": None, "model_config": TINY, "frozen": True, **kwargs})


def trainer():
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


# ----- text tower and prompts -------------------------------------------------------------------------------------
def test_text_features_come_from_the_real_tokenizer():
    backbone = tiny_clip()
    assert isinstance(backbone.tokenizer, open_clip.SimpleTokenizer)
    tokens = backbone.tokenizer(["a photo of a car side.", "a photo of a water lilly."])
    assert tokens.shape == (2, 77)
    assert (tokens[:, 0] == START_OF_TEXT).all() and (tokens == END_OF_TEXT).sum() == 2
    assert tokens[0].count_nonzero() == 9  # start, a, photo, of, a, car, side, ".", end: real BPE words
    assert "a photo of a car side ." in open_clip.decode(tokens[0])
    features = backbone.encode_text(["a photo of a car side.", "a photo of a water lilly.", "a photo of a car side."])
    assert features.shape == (3, backbone.out_features) == (3, 32)
    assert torch.allclose(features[0], features[2]) and not torch.allclose(features[0], features[1])


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompt_features():
    backbone = tiny_clip()
    templates = prompt_templates(["a photo of a {}.", "a drawing of the {}.", "{}"])
    prompts = prompts_for(["car_side", "Leopards"], templates)
    assert prompts[:3] == ["a photo of a car side.", "a drawing of the car side.", "car side"]
    weights = ensemble_text_features(backbone.encode_text(prompts), 2)
    for index in range(2):
        per_prompt = torch.nn.functional.normalize(backbone.encode_text(prompts[3 * index : 3 * index + 3]), dim=-1)
        expected = torch.nn.functional.normalize(per_prompt.mean(0), dim=0)
        assert torch.allclose(weights[index], expected, atol=1e-5)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(2))


def test_templates_take_one_template_a_list_or_a_named_ensemble():
    assert prompt_templates("a photo of a {}.") == ("a photo of a {}.",)
    assert len(prompt_templates("openai_imagenet")) == 80 and len(prompt_templates("simple_imagenet")) == 7
    assert all(template.count("{}") == 1 for template in prompt_templates("openai_imagenet"))
    with pytest.raises(ValueError, match=r"must hold '\{\}' exactly once.*openai_imagenet"):
        prompt_templates("a photo of a cat")
    with pytest.raises(ValueError, match="empty"):
        prompt_templates([])
    assert readable_class_name("  sea_turtle ") == "sea turtle"


# ----- zero-shot --------------------------------------------------------------------------------------------------
class AlignedImageTower(nn.Module):
    """The tiny CLIP with a hand-made image tower: an image whose pixels hold the value ``k / 255`` is embedded as
    the text features of "a photo of a <class k>." (scaled, plus noise), so image and text features are aligned."""

    def __init__(self, clip: CLIPBackbone, class_names: list[str]) -> None:
        super().__init__()
        self.clip = clip
        self.text = clip.encode_text(prompts_for(class_names, ["a photo of a {}."])).detach()

    def forward(self, images):
        classes = (images[:, 0, 0, 0] * 255).round().long()
        return 3.0 * self.text[classes] + 0.05 * torch.randn(len(images), self.text.shape[1])

    def encode_text(self, texts):
        return self.clip.encode_text(texts)

    @property
    def logit_scale(self):
        return self.clip.logit_scale


def test_aligned_text_and_image_features_classify_right_from_class_names():
    names = ["dolphin", "grand_piano", "sunflower", "stop_sign", "kangaroo", "laptop", "pizza"]
    model = CLIPZeroShot(AlignedImageTower(tiny_clip(), names), templates="a photo of a {}.")
    truth = torch.tensor([3, 0, 6, 1, 5, 2, 4, 4, 0])
    queries = truth.float().div(255).view(-1, 1, 1, 1).expand(-1, 3, 32, 32)
    batch = {
        "episode": Episode(
            queries[:0], torch.zeros(0, dtype=torch.long), queries, torch.full((9,), -1), torch.arange(len(names))
        ),
        "class_names": names,
        "query_files": [f"q{i}.png" for i in range(9)],
    }
    rows = model.predict_step(batch, 0)
    assert [row["predicted_class"] for row in rows] == [names[k] for k in truth]
    logits = model.zero_shot_logits(model.embed(queries), model.class_weights(names))
    assert logits.shape == (9, 7) and float(logits.max()) <= float(model.backbone.logit_scale) + 1e-4


def test_top_k_accuracy_and_mix_end_points():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert float(top_k_accuracy(logits, labels, 1)) == pytest.approx(1 / 3)
    assert float(top_k_accuracy(logits, labels, 2)) == pytest.approx(2 / 3)
    assert float(top_k_accuracy(logits, labels, 5)) == 1.0  # k capped at the way
    zero_shot, few_shot = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(mix_log_probabilities(zero_shot, few_shot, 0.0), zero_shot.log_softmax(-1))
    assert torch.allclose(mix_log_probabilities(zero_shot, few_shot, 1.0), few_shot.log_softmax(-1))


def test_zero_shot_on_caltech_logs_top1_and_top5_over_all_test_classes(caltech_subset32):
    model = CLIPZeroShot(tiny_clip(), templates="simple_imagenet")
    dm = EpisodicDataModule(caltech_subset32, evaluation=EpisodeSpec(20, 1, 15), val_episodes=2, test_episodes=10)
    result = trainer().test(model, dm, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= result["test/top5"] <= 1.0 and result["test/top5"] < 1.0
    assert len(model._class_weights) == 1  # the 20 test classes' text classifier, computed once


# ----- few-shot ---------------------------------------------------------------------------------------------------
def test_few_shot_prototypes_beat_chance_on_caltech_and_reuse_the_features(caltech_subset32):
    model = CLIPFewShot(tiny_clip(), episode_classifier=NearestCentroid(scale=100.0), mix_weight=1.0)
    dm = EpisodicDataModule(caltech_subset32, evaluation=EpisodeSpec(5, 1, 15), val_episodes=2, test_episodes=100)
    result = trainer().test(model, dm, verbose=False)[0]
    assert result["test/acc"] - result["test/acc_ci95"] > 0.2  # chance is 1/5
    assert result["test/mix_weight"] == 1.0
    assert model.images_embedded == len(dm.splits["test"].images)


def test_mix_weight_is_chosen_on_validation_episodes_and_kept(caltech_subset32, capsys):
    model = CLIPFewShot(tiny_clip(), mix_weight_grid=[0.0, 0.5, 1.0])
    dm = EpisodicDataModule(caltech_subset32, evaluation=EpisodeSpec(5, 1, 15), val_episodes=8, test_episodes=10)
    result = trainer().test(model, dm, verbose=False)[0]
    assert model.chosen_mix_weight in (0.0, 0.5, 1.0) and result["test/mix_weight"] == model.chosen_mix_weight
    assert "chosen on 600 validation queries" in capsys.readouterr().out  # 8 episodes x 5 classes x 15 queries
    assert model.images_embedded == len(dm.splits["test"].images) + len(dm.splits["val"].images)
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    restored = CLIPFewShot(tiny_clip())
    restored.on_load_checkpoint(checkpoint)
    assert restored.chosen_mix_weight == model.chosen_mix_weight


def test_few_shot_mix_with_logistic_regression_runs_on_caltech(caltech_subset32):
    model = CLIPFewShot(tiny_clip(), episode_classifier=LogisticRegression(), mix_weight=0.5)
    dm = EpisodicDataModule(caltech_subset32, evaluation=EpisodeSpec(5, 5, 15), val_episodes=2, test_episodes=10)
    result = trainer().test(model, dm, verbose=False)[0]
    assert 0.0 <= result["test/acc"] <= 1.0 and result["test/mix_weight"] == 0.5


def test_bad_mix_weights_are_refused():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        CLIPFewShot(tiny_clip(), mix_weight=1.5)
    with pytest.raises(ValueError, match="mix_weight_grid is empty"):
        CLIPFewShot(tiny_clip(), mix_weight_grid=[])
    with pytest.raises(ValueError, match="text tower"):
        CLIPZeroShot(nn.Linear(2, 2))


# ----- weights ----------------------------------------------------------------------------------------------------
def test_local_weights_file_round_trip_and_tag_preprocessing(tmp_path):
    source = tiny_clip().eval()
    path = tmp_path / "tiny_clip.pt"
    torch.save(source.model.state_dict(), path)
    images = torch.rand(2, 3, 32, 32)
    loaded = tiny_clip(weights_path=str(path)).eval()
    assert torch.equal(loaded(images), source(images))
    # The tag's record decides the activation (QuickGELU for OpenAI's weights) and the normalisation.
    openai = tiny_clip(pretrained="openai", weights_path=str(path))
    assert isinstance(openai.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)
    assert torch.allclose(openai.input.mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))
    assert torch.equal(openai.model.visual.conv1.weight, source.model.visual.conv1.weight)
    with pytest.raises(ValueError, match="does not fit open_clip model 'ViT-B-32'"):
        CLIPBackbone("ViT-B-32", pretrained=None, weights_path=str(path))


def test_offline_error_says_which_file_to_put_where(tmp_path):
    with pytest.raises(PretrainedWeightsUnavailableError) as error:
        CLIPBackbone("ViT-B-32", pretrained="openai")
    message = str(error.value)
    assert "timm/vit_base_patch32_clip_224.openai" in message and "open_clip_pytorch_model.bin" in message
    assert str(tmp_path / "hf_hub" / "models--timm--vit_base_patch32_clip_224.openai") in message
    assert "weights_path" in message and "keep `pretrained: openai`" in message and "pretrained: null" in message


def test_unknown_models_and_tags_are_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown open_clip model 'ViT-X-99'.*list_models"):
        CLIPBackbone("ViT-X-99", pretrained=None)
    with pytest.raises(ValueError, match=r"Unknown pretrained tag 'imagenet'.*openai.*laion2b_s34b_b79k"):
        CLIPBackbone("ViT-B-32", pretrained="imagenet")
    with pytest.raises(TypeError, match="pretrained"):
        CLIPBackbone("ViT-B-32")


# ----- predict through the CLI ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def user_folders(caltech_subset32, tmp_path_factory):
    """Real Caltech-101 test images laid out as a user would: 2 support images per class, 3 queries per class."""
    root = tmp_path_factory.mktemp("user")
    split = caltech_subset32.full.load_split("test")
    names = split.class_names[:3]
    for label, name in enumerate(names):
        start = int(split.class_offsets[label])
        for number in range(5):
            folder = root / "support" / name if number < 2 else root / "queries"
            folder.mkdir(parents=True, exist_ok=True)
            image = split.images[start + number].permute(1, 2, 0).numpy()
            Image.fromarray(image).save(folder / (f"{number}.png" if number < 2 else f"{name}_{number}.png"))
    return root, names


def tiny_config(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return str(path)


def read_predictions(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_predict_with_a_support_folder_mixes_few_shot_and_zero_shot(user_folders, tmp_path):
    root, names = user_folders
    output = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            "--config",
            str(EXPERIMENTS / "clip_5w1s.yaml"),
            "--config",
            tiny_config(tmp_path),
            f"--data.predict_support_dir={root / 'support'}",
            f"--data.predict_query_dir={root / 'queries'}",
            "--model.init_args.mix_weight=0.5",
            "--trainer.accelerator=cpu",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--prediction_writer.output_path={output}",
        ]
    )
    rows = read_predictions(output)
    assert len(rows) == 9 and {row["predicted_class"] for row in rows} <= set(names)
    assert all(0 < float(row["probability"]) <= 1 for row in rows)


def test_predict_from_class_names_alone_is_zero_shot(user_folders, tmp_path):
    root, _ = user_folders
    output = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            "--config",
            str(EXPERIMENTS / "clip_zeroshot.yaml"),
            "--config",
            tiny_config(tmp_path),
            f"--data.predict_query_dir={root / 'queries'}",
            "--data.predict_class_names=[sea_turtle, piano, cat]",
            "--trainer.accelerator=cpu",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--prediction_writer.output_path={output}",
        ]
    )
    rows = read_predictions(output)
    assert len(rows) == 9 and {row["predicted_class"] for row in rows} <= {"sea_turtle", "piano", "cat"}


def test_class_names_without_support_need_a_zero_shot_method(caltech_subset32, user_folders):
    root, _ = user_folders
    from fsl_lightning.backbones.timm_backbone import TimmBackbone
    from fsl_lightning.methods import FrozenFeatures

    dm = EpisodicDataModule(
        caltech_subset32, predict_query_dir=str(root / "queries"), predict_class_names=["cat", "dog"]
    )
    frozen = FrozenFeatures(TimmBackbone("resnet18", pretrained=None, frozen=True, image_size=32))
    with pytest.raises(ValueError, match=r"zero-shot prediction, which FrozenFeatures cannot do.*predict_support_dir"):
        trainer().predict(frozen, dm)
    with pytest.raises(ValueError, match="at least 2 distinct"):
        trainer().predict(
            CLIPZeroShot(tiny_clip()),
            EpisodicDataModule(
                caltech_subset32, predict_query_dir=str(root / "queries"), predict_class_names=["cat", "cat"]
            ),
        )
    with pytest.raises(ValueError, match="not both"):
        trainer().predict(
            CLIPZeroShot(tiny_clip()),
            EpisodicDataModule(
                caltech_subset32,
                predict_support_dir=str(root / "support"),
                predict_query_dir=str(root / "queries"),
                predict_class_names=["cat", "dog"],
            ),
        )
