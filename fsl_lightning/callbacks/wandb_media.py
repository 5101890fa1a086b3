"""What a W&B dashboard shows of a test run beyond scalars: per-episode accuracy, an episode, an embedding map."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchvision.utils import make_grid

from fsl_lightning.episode import Episode

SUPPORT_FRAME = torch.tensor([0.3, 0.5, 1.0])  # blue
RIGHT_FRAME = torch.tensor([0.1, 0.8, 0.1])  # green
WRONG_FRAME = torch.tensor([0.9, 0.1, 0.1])  # red


class WandbTestMedia(Callback):
    """At test time, when a :class:`WandbLogger` is in use (otherwise it does nothing), logs:

    * ``test/episode``: the first test episode as an image grid, one row per class: its support images
      (blue frames), then its queries framed green when predicted right and red when wrong;
    * ``test/per_episode_acc``: a histogram of the accuracy of every test episode;
    * ``test/embeddings``: a 2-D PCA projection of the embeddings of ``projection_classes`` test classes.

    Args:
        queries_per_row: queries shown per class in the episode grid.
        projection_classes: test classes in the embedding map (all their images).
    """

    def __init__(self, queries_per_row: int = 5, projection_classes: int = 10) -> None:
        self.queries_per_row = queries_per_row
        self.projection_classes = projection_classes

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        logger = _wandb_logger(trainer)
        if logger is None or batch_idx != 0 or not trainer.is_global_zero or not isinstance(batch, Episode):
            return
        with torch.no_grad():
            predicted = pl_module.episode_logits(batch).argmax(dim=-1)
        logger.log_image("test/episode", [self._episode_grid(batch, predicted)], caption=[_caption(batch)])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        import wandb

        summary = getattr(pl_module, "last_accuracy", {}).get("test")
        if summary is not None:
            logger.experiment.log({"test/per_episode_acc": wandb.Histogram(summary.per_episode.cpu().numpy())})
        table = self._embedding_table(trainer, pl_module)
        if table is not None:
            logger.experiment.log(
                {"test/embeddings": wandb.plot.scatter(table, "x", "y", title="Test-class embeddings (PCA)")}
            )

    def _episode_grid(self, episode: Episode, predicted: Tensor) -> np.ndarray:
        tiles = []
        for label in range(episode.way):
            support = episode.support_images[episode.support_labels == label]
            is_query = episode.query_labels == label
            queries = episode.query_images[is_query][: self.queries_per_row]
            right = (predicted[is_query] == label)[: self.queries_per_row]
            tiles += [_framed(image, SUPPORT_FRAME) for image in support]
            tiles += [_framed(image, RIGHT_FRAME if ok else WRONG_FRAME) for image, ok in zip(queries, right.tolist())]
        per_row = len(tiles) // episode.way
        grid = make_grid(torch.stack(tiles), nrow=per_row, padding=2, pad_value=1.0)
        return (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # HWC uint8 for W&B

    def _embedding_table(self, trainer: L.Trainer, pl_module: L.LightningModule):
        # Lightning's connectors set this Trainer attribute from outside its class: mypy does not see it
        classes = getattr(trainer.datamodule, "splits", {}).get("test")  # type: ignore[attr-defined]
        backbone = getattr(pl_module, "backbone", None)
        if classes is None or backbone is None:
            return None
        import wandb

        count = min(self.projection_classes, classes.num_classes)
        end = int(classes.class_offsets[count])
        images = classes.images[:end].to(pl_module.device).float() / 255
        labels = torch.repeat_interleave(torch.arange(count), classes.images_per_class[:count])
        with torch.no_grad():
            embeddings = backbone(images).flatten(1).float()
        points = _pca_2d(embeddings).cpu()
        rows = [[float(x), float(y), classes.class_names[int(c)]] for (x, y), c in zip(points, labels)]
        return wandb.Table(data=rows, columns=["x", "y", "class"])


def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)


def _framed(image: Tensor, colour: Tensor, width: int = 2) -> Tensor:
    """[C, H, W] in 0..1 -> RGB [3, H + 2w, W + 2w] inside a coloured frame."""
    rgb = image.float().cpu().expand(3, -1, -1)
    frame = colour[:, None, None].expand(3, rgb.shape[1] + 2 * width, rgb.shape[2] + 2 * width).clone()
    frame[:, width:-width, width:-width] = rgb
    return frame


def _pca_2d(embeddings: Tensor) -> Tensor:
    centred = embeddings - embeddings.mean(dim=0)
    _, _, components = torch.pca_lowrank(centred, q=2, center=False)
    return centred @ components


def _caption(episode: Episode) -> str:
    shots = len(episode.support_labels) // episode.way
    return f"{episode.way}-way {shots}-shot; rows: classes; blue: support, green/red: queries right/wrong"
