"""The batches of ``predict``: a user's support images with a slice of their queries, and the episode a method
scores from one of them. The CLI's data module and the Python API (:mod:`fsl_lightning.classifier`) both slice
their queries here, so that both give a method the same inputs. The support set is fitted once (at the first
batch in the CLI, in ``fit_support`` in the API) and each slice of queries scored against it."""

from __future__ import annotations

import torch
from torch import Tensor

from fsl_lightning.data.images import as_model_input
from fsl_lightning.episode import Episode

#: query images per ``predict`` step; transductive methods (``FewShotMethod.transductive``: MAML's batch statistics)
#: score a query together with the others of its batch, so for them the batching is part of the result
PREDICT_BATCH_SIZE = 256


def prediction_batches(
    support_images: Tensor,
    support_labels: Tensor,
    class_names: list[str],
    query_images: Tensor,
    query_files: list[str | None],
    batch_size: int = PREDICT_BATCH_SIZE,
) -> list[dict]:
    """The support set with each ``batch_size`` slice of the queries, in order (what ``predict_step`` takes)."""
    return [
        {
            "support_images": support_images,
            "support_labels": support_labels,
            "query_images": images,
            "query_files": files,
            "class_names": class_names,
        }
        for images, files in query_slices(query_images, query_files, batch_size)
    ]


def query_slices(
    query_images: Tensor, query_files: list[str | None], batch_size: int = PREDICT_BATCH_SIZE
) -> list[tuple[Tensor, list[str | None]]]:
    """The queries and their files in slices of ``batch_size``, in order."""
    return [
        (query_images[start : start + batch_size], query_files[start : start + batch_size])
        for start in range(0, len(query_files), batch_size)
    ]


def prediction_episode(batch: dict) -> Episode:
    """The episode of a prediction batch already on the compute device (query labels unknown: -1)."""
    queries = batch["query_images"]
    return Episode(
        support_images=as_model_input(batch["support_images"]),
        support_labels=batch["support_labels"],
        query_images=as_model_input(queries),
        query_labels=torch.full((len(queries),), -1, device=queries.device),
        class_ids=torch.arange(len(batch["class_names"]), device=queries.device),
    )
