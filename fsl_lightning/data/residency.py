"""Where a split's images live while episodes are drawn from it: whole on the compute device, or on the host.

``device`` copies each split to the device once and gathers every episode there (no host work per step: the fastest
when the split fits). ``host`` leaves the split where it is (the memory-mapped cache file, shared by the processes of
the machine and paged in on demand) and gathers each episode's images on the host, in a background loader process,
pinned when a GPU waits for them; only the episode crosses to the device. ``auto`` takes ``device`` when the splits
in use fit in :data:`DEVICE_FRACTION` of the device's free memory, ``host`` otherwise. The indices of every episode
are the same in both, so evaluation episodes, and their numbers, do not depend on the choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

Residency = Literal["device", "host", "auto"]
#: ``auto`` keeps the splits on the device when they take at most this share of its free memory (the rest is left
#: to the model, its activations and the optimiser)
DEVICE_FRACTION = 0.5


class GatheredBatch(NamedTuple):
    """A batch gathered on the host: uint8 images [..., way, shot + query, C, H, W] (or [B, C, H, W] for
    mini-batches), their indices in the split, the class ids, and the batch key (``None`` for mini-batches)."""

    images: Tensor
    image_indices: Tensor
    class_ids: Tensor
    key: int | None


class IndexStream(Protocol):
    """Batches of (image indices, class ids[, key]), as many as its length (the samplers' streams)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...


class HostGatheredStream(IterableDataset):
    """The batches of ``index_stream`` with their images gathered from ``images`` (the split, on the host)."""

    def __init__(self, index_stream: IndexStream, images: Tensor) -> None:
        self.index_stream = index_stream
        self.images = images

    def __len__(self) -> int:
        return len(self.index_stream)

    def __iter__(self) -> Iterator[GatheredBatch]:
        for image_indices, class_ids, *key in self.index_stream:
            yield GatheredBatch(self.images[image_indices], image_indices, class_ids, key[0] if key else None)


def choose_residency(requested: Residency, split_bytes: int, device: torch.device) -> tuple[str, str]:
    """The residency to use and why, in words, for splits of ``split_bytes`` on ``device``."""
    if requested != "auto":
        return requested, f"data.resident: {requested}"
    if device.type != "cuda":
        return "device", "the compute device is the host: the split is used where it is mapped, not copied"
    free, _ = torch.cuda.mem_get_info(device)
    fits = split_bytes <= DEVICE_FRACTION * free
    share = f"{split_bytes / 2**30:.2f} GiB of images against {free / 2**30:.1f} GiB free on {device}"
    return ("device", f"{share}: they fit") if fits else ("host", f"{share}: more than {DEVICE_FRACTION:.0%}")
