"""DDP: tasks of a meta-batch split over 2 processes give the single-device meta-gradient (exact, float64)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsl_lightning.episode import Episode
from fsl_lightning.methods.maml import MAML

sys.path.insert(0, str(Path(__file__).parent))
from test_adaptation import meta_batch, tiny_method  # noqa: E402

WORKER = Path(__file__).with_name("ddp_meta_gradient_worker.py")


@pytest.mark.slow  # several processes
@pytest.mark.parametrize("engine", ["vmap", "loop", "learn2learn"])
def test_two_process_meta_gradient_equals_single_device(engine, tmp_path):
    """The worker runs as a subprocess: spawning ranks from inside pytest would re-import the test session."""
    output = tmp_path / "ddp_grads.pt"
    command = [sys.executable, str(WORKER), engine, str(output)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    distributed = torch.load(output)

    # One device, the same tasks (one per rank: the first two of the meta-batch), one meta-batch.
    batch = meta_batch()
    both = Episode(
        *(
            field[:2]
            for field in (
                batch.support_images,
                batch.support_labels,
                batch.query_images,
                batch.query_labels,
                batch.class_ids,
            )
        )
    )
    method = tiny_method(MAML, engine, steps=2, first_order=False)
    single = torch.autograd.grad(method.meta_loss(both)[0], list(method.parameters()))
    assert len(distributed) == len(single)
    for d, s in zip(distributed, single):
        torch.testing.assert_close(d, s, rtol=1e-10, atol=1e-12)
    # and not vacuously: one rank's tasks alone give another gradient
    alone = torch.autograd.grad(
        method.meta_loss(
            Episode(
                *(
                    f[:1]
                    for f in (
                        batch.support_images,
                        batch.support_labels,
                        batch.query_images,
                        batch.query_labels,
                        batch.class_ids,
                    )
                )
            )
        )[0],
        list(method.parameters()),
    )
    assert max((a - s).abs().max().item() for a, s in zip(alone, single)) > 1e-6
