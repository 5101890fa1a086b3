"""A callback for benchmarks: the wall time of the test loop alone (episodes drawn, scored, summed up), without
start-up, model or data set-up; written as JSON ``{"seconds", "episodes"}`` to ``output_path``.

    python -m fsl_lightning test ... --trainer.callbacks+=loop_timer.TestLoopTimer \
        --trainer.callbacks.output_path=timing.json        # with benchmarks/ on PYTHONPATH
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class TestLoopTimer(Callback):
    __test__ = False  # not a pytest test class, whatever collects it

    def __init__(self, output_path: str) -> None:
        self.output_path = Path(output_path)
        self.started = 0.0
        self.episodes = 0

    def on_test_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.episodes += 1

    def on_test_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.started
        self.output_path.write_text(json.dumps({"seconds": seconds, "episodes": self.episodes}))
