"""Run by tests/test_maml_ddp.py as a subprocess: 2 CPU processes (gloo) each meta-train on half the tasks of a
meta-batch under DistributedDataParallel; rank 0 saves the averaged meta-gradient for comparison.

Usage: python ddp_meta_gradient_worker.py ENGINE OUTPUT_FILE
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(__file__))
from fsl_lightning.episode import Episode  # noqa: E402
from fsl_lightning.methods.maml import MAML  # noqa: E402
from test_adaptation import TASKS, meta_batch, tiny_method  # noqa: E402

WORLD = 2


class MetaLoss(nn.Module):
    """What Lightning's DDP wrapper does: the forward is the training step, so DDP's reducer sees it."""

    def __init__(self, method: MAML) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Episode) -> Tensor:
        return self.method.meta_loss(batch)[0]


def shard(batch: Episode, rank: int) -> Episode:
    per_rank = TASKS // WORLD
    pick = slice(rank * per_rank, (rank + 1) * per_rank)
    return Episode(
        *(
            field[pick]
            for field in (
                batch.support_images,
                batch.support_labels,
                batch.query_images,
                batch.query_labels,
                batch.class_ids,
            )
        )
    )


def worker(rank: int, engine: str, port: int, output: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    method = tiny_method(MAML, engine, steps=2, first_order=False)  # same seed, same weights on every rank
    model = nn.parallel.DistributedDataParallel(MetaLoss(method))
    model(shard(meta_batch(), rank)).backward()
    if rank == 0:
        torch.save([p.grad for p in method.parameters()], output)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], free_port(), sys.argv[2]), nprocs=WORLD)
