"""A callback that ends a ``fit`` at its first training step, for ``benchmarks/startup.py``.

Appended to a run with ``--trainer.callbacks+=first_step.ExitAfterFirstStep`` (this folder on PYTHONPATH): after
the first training batch it prints which heavy libraries the run has imported so far, then ends the process at
once, so that the time the process took is the start-up of ``fit`` up to and including its first step.
"""

from __future__ import annotations

import json
import os
import sys

from lightning.pytorch.callbacks import Callback
from startup import MARKER, WATCHED


class ExitAfterFirstStep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        print(MARKER, json.dumps([name for name in WATCHED if name in sys.modules]), flush=True)
        os._exit(0)  # no teardown, no checkpoint: only the start-up is measured
