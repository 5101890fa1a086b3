"""Every registered method (``fsl_lightning.methods.METHODS``) built tiny, and one real episode for it (used by
tests/test_support_split.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fsl_lightning.backbones import Conv4
from fsl_lightning.backbones.clip_backbone import CLIPBackbone
from fsl_lightning.backbones.maml_conv4 import MAMLConv4
from fsl_lightning.backbones.relation_conv4 import RelationConv4
from fsl_lightning.data.images import as_model_input
from fsl_lightning.episode import Episode, EpisodeSpec, split_support_query
from fsl_lightning.methods import (
    ANIL,
    DN4,
    FEAT,
    FOMAML,
    MAML,
    R2D2,
    SKD,
    Baseline,
    BaselinePlusPlus,
    ClassifierBaseline,
    CLIPFewShot,
    CLIPZeroShot,
    FewShotMethod,
    FrozenFeatures,
    MatchingNet,
    MetaBaseline,
    MetaOptNet,
    MetaSGD,
    NearestNeighbour,
    ProtoNet,
    RelationNet,
    Reptile,
    RFSDistill,
    RFSSimple,
    Siamese,
    Transfer,
)

#: 5-way 2-shot (K > 1: class means, sums and averages are exercised) with 3 queries per class
SPEC = EpisodeSpec(way=5, shot=2, query=3)
EPISODE_SEED = 7
#: classes of the Vinyals Omniglot test split (28x28) and of Caltech-101's test split (32x32, for CLIP)
OMNIGLOT_CLASSES = [0, 300, 600, 900, 1200]
CALTECH_CLASSES = [0, 1, 2, 3, 4]
#: the methods that take RGB images (CLIP): their episode is from Caltech-101
RGB_METHODS = {"CLIPZeroShot", "CLIPFewShot"}
#: open_clip's ViT-B-32 at 32 pixels, 2 blocks deep and 64 wide (as tests/test_clip.py)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"width": 64, "heads": 2, "layers": 2},
}


def _maml_backbone(batch_norm: str = "batch") -> MAMLConv4:
    return MAMLConv4(in_channels=1, way=SPEC.way, hidden_channels=16, downsampling="stride", batch_norm=batch_norm)


def _clip() -> CLIPBackbone:
    return CLIPBackbone("ViT-B-32", pretrained=None, model_config=TINY_CLIP, frozen=True)


BUILDERS: dict[str, Callable[[], FewShotMethod]] = {
    "ProtoNet": lambda: ProtoNet(Conv4(1, 16)),
    "MatchingNet": lambda: MatchingNet(Conv4(1, 16), fce=True, embedding_dim=16),
    "RelationNet": lambda: RelationNet(RelationConv4(1, 16), feature_channels=16, feature_size=5, hidden_channels=8),
    "Siamese": lambda: Siamese(Conv4(1, 16), embedding_dim=16),
    "NearestNeighbour": lambda: NearestNeighbour(nn.Flatten()),
    # batch statistics (the paper's MAML: transductive) and running averages (each query normalised alone)
    "MAML": lambda: MAML(_maml_backbone(), test_inner_steps=2),
    "FOMAML": lambda: FOMAML(_maml_backbone("running"), test_inner_steps=2),
    "MetaSGD": lambda: MetaSGD(_maml_backbone("running")),
    "ANIL": lambda: ANIL(_maml_backbone(), test_inner_steps=2),
    # the plain-SGD inner loop (inner_optimizer="adam", the default, is tested in test_reptile)
    "Reptile": lambda: Reptile(
        _maml_backbone("running"),
        inner_steps=2,
        test_inner_steps=2,
        inner_optimizer="sgd",
        inner_lr=0.1,
        inner_batch_size=None,
        test_inner_batch_size=None,
    ),
    "R2D2": lambda: R2D2(Conv4(1, 16)),
    # DN4's Conv64F (7x7 descriptors of 28x28 images); FEAT with its Transformer over 16-d embeddings
    "DN4": lambda: DN4(Conv4(1, 16, flatten=False, pooled_blocks=2, negative_slope=0.2)),
    "FEAT": lambda: FEAT(Conv4(1, 16), feature_dim=16),
    "MetaOptNet": lambda: MetaOptNet(Conv4(1, 16)),
    "Transfer": lambda: Transfer(Conv4(1, 16), num_base_classes=8, feature_dim=16),
    "Baseline": lambda: Baseline(Conv4(1, 16), num_base_classes=8, feature_dim=16),
    "BaselinePlusPlus": lambda: BaselinePlusPlus(Conv4(1, 16), num_base_classes=8, feature_dim=16),
    "RFSSimple": lambda: RFSSimple(Conv4(1, 16), num_base_classes=8, feature_dim=16),
    "RFSDistill": lambda: RFSDistill(
        Conv4(1, 16), num_base_classes=8, feature_dim=16, teacher_checkpoint="teacher.ckpt"
    ),  # read only when fit starts
    "SKD": lambda: SKD(Conv4(1, 16), num_base_classes=8, feature_dim=16),
    "ClassifierBaseline": lambda: ClassifierBaseline(Conv4(1, 16), num_base_classes=8, feature_dim=16),
    "MetaBaseline": lambda: MetaBaseline(Conv4(1, 16), classifier_baseline_checkpoint="stage1.ckpt"),  # read by fit
    "FrozenFeatures": lambda: FrozenFeatures(Conv4(1, 16)),
    "CLIPZeroShot": lambda: CLIPZeroShot(_clip()),
    "CLIPFewShot": lambda: CLIPFewShot(_clip(), mix_weight=0.5),
}
#: methods whose training step scores the episode with ``episode_logits`` in training mode
TRAINED_ON_EPISODE_LOGITS = {
    "ProtoNet",
    "MatchingNet",
    "RelationNet",
    "R2D2",
    "DN4",
    "MetaOptNet",
    "MetaBaseline",
}
MAML_FAMILY = {"MAML", "FOMAML", "MetaSGD", "ANIL", "Reptile"}


def build(name: str) -> FewShotMethod:
    """The method, its weights drawn from seed 0."""
    torch.manual_seed(0)
    return BUILDERS[name]()


def real_episode(classes, class_ids: list[int]) -> tuple[Episode, list[str]]:
    """The first ``shot + query`` images of each class of a decoded split as an evaluation episode (with its seed
    and image indices), and the classes' names."""
    offsets = classes.class_offsets
    indices = torch.stack([offsets[c] + torch.arange(SPEC.shot + SPEC.query) for c in class_ids])  # [way, K + Q]
    images = as_model_input(classes.images[indices])
    episode = split_support_query(images, torch.tensor(class_ids), SPEC, indices, seed=EPISODE_SEED)
    return episode, [classes.class_names[c] for c in class_ids]


def load_episodes() -> dict[str, tuple[Episode, list[str]]]:
    """The Omniglot (grayscale) and Caltech-101 (RGB) episodes, by the kind of image they hold."""
    from fsl_lightning.data import Caltech101, Omniglot

    omniglot = Omniglot(protocol="vinyals", download=False)
    caltech = Caltech101(image_size=32, download=False)
    omniglot.prepare()
    caltech.prepare()
    return {
        "gray": real_episode(omniglot.load_split("test"), OMNIGLOT_CLASSES),
        "rgb": real_episode(caltech.load_split("test"), CALTECH_CLASSES),
    }


def episode_of(name: str, episodes: dict[str, tuple[Episode, list[str]]]) -> tuple[Episode, list[str]]:
    return episodes["rgb" if name in RGB_METHODS else "gray"]
