"""A callback that ends a ``fit`` as its first training step begins, for ``benchmarks/startup.py``.

Appended to a run with ``--trainer.callbacks+=first_step.ExitAtFirstStep`` (this folder on PYTHONPATH): when the
first training batch is ready it prints which heavy libraries the run has imported so far, then ends the process at
once, so that the time the process took is the start-up of ``fit``: imports, parsing, building the model and data,
Lightning's validation sanity check, up to the first step (the step's own computation is not start-up).
"""

from __future__ import annotations

import json
import os
import sys

from lightning.pytorch.callbacks import Callback

from startup import MARKER, WATCHED


class ExitAtFirstStep(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        print(MARKER, json.dumps([name for name in WATCHED if name in sys.modules]), flush=True)
        os._exit(0)  # no step, no teardown: only the start-up is measured
