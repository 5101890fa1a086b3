"""Siamese's prediction layer initialised as Koch et al. section 3.2 against PyTorch's default, in the setting of
the Siamese accuracy test (``tests/test_metric_measured.py``: Conv4 twin, 300 steps of 5-way 1-shot 5-query
episodes, 300 fixed test episodes).

    OMP_NUM_THREADS=1 python benchmarks/siamese_head_init.py koch      # or: pytorch
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_metric_measured as metric  # noqa: E402  (the test holds the setting)

from fsl_lightning.backbones import Conv4  # noqa: E402
from fsl_lightning.cpu_features import this_cpu  # noqa: E402
from fsl_lightning.data import Omniglot  # noqa: E402
from fsl_lightning.methods.siamese import Siamese  # noqa: E402


def main() -> None:
    initialisation = sys.argv[1] if len(sys.argv) > 1 else "koch"
    print(f"CPU: {this_cpu().description()}; head_initialisation: {initialisation}")
    omniglot = Omniglot(protocol="vinyals")
    for seed in (0, 1, 2):
        start = time.time()
        result = metric.untrained_and_trained_accuracy(
            lambda: Siamese(Conv4(in_channels=1), metric.adam, embedding_dim=64, head_initialisation=initialisation),
            omniglot, seed=seed,
        )
        print(f"seed {seed}: untrained {result['untrained']:.3f}, trained {result['trained']:.3f} "
              f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
