"""A metric method's reference settings against the ones it used before, in the setting of its accuracy
test (``tests/test_metric_measured.py``: 300 steps of 5-way 1-shot 5-query Omniglot episodes, Adam 1e-3, 300
fixed test episodes), seeds 0, 1 and 2.

    OMP_NUM_THREADS=1 python benchmarks/metric_variants.py siamese koch          # or: siamese pytorch
    OMP_NUM_THREADS=1 python benchmarks/metric_variants.py relationnet reference # or: relationnet previous
    OMP_NUM_THREADS=1 python benchmarks/metric_variants.py r2d2 reference        # or: r2d2 previous

* ``siamese``: the prediction layer initialised as Koch et al. section 3.2 (``koch``) or PyTorch's default.
* ``relationnet``: the reference code's weight initialisation, per-module gradient clipping at 0.5 and support /
  query backbone passes apart (``reference``), or none of them (``previous``: PyTorch's initialisation, no
  clipping, one pass per episode).
* ``r2d2``: bertinetto/r2d2's head on Conv4 features (``reference``: lambda fixed at 50 and scaled by the support
  size, logit scale from 10 as their Omniglot runs), or this project's former head (``previous``: lambda
  meta-learned from 50, not scaled, logit scale from 1).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_metric_measured as metric  # noqa: E402  (the test holds the setting)
from fsl_lightning.backbones import Conv4, RelationConv4  # noqa: E402
from fsl_lightning.data import Omniglot  # noqa: E402
from fsl_lightning.methods import R2D2, RelationNet, Siamese  # noqa: E402
from fsl_lightning.run.cpu_features import this_cpu  # noqa: E402

VARIANTS = {
    ("siamese", "koch"): lambda: Siamese(Conv4(in_channels=1), metric.adam, embedding_dim=64),
    ("siamese", "pytorch"): lambda: Siamese(
        Conv4(in_channels=1), metric.adam, embedding_dim=64, head_initialisation="pytorch"
    ),
    ("relationnet", "reference"): lambda: RelationNet(RelationConv4(in_channels=1), metric.adam),
    ("relationnet", "previous"): lambda: RelationNet(
        RelationConv4(in_channels=1),
        metric.adam,
        initialisation="pytorch",
        module_gradient_clip_norm=None,
        embedding_batches="episode",
    ),
    ("r2d2", "reference"): lambda: R2D2(Conv4(in_channels=1), metric.adam, initial_scale=10.0),
    ("r2d2", "previous"): lambda: R2D2(
        Conv4(in_channels=1), metric.adam, regulariser_scaling="plain", learn_lambda=True, initial_scale=1.0
    ),
}


def main() -> None:
    method, variant = sys.argv[1:3]
    build = VARIANTS[(method, variant)]
    print(f"CPU: {this_cpu().description()}; {method}, {variant}")
    omniglot = Omniglot(protocol="vinyals")
    for seed in (0, 1, 2):
        start = time.time()
        result = metric.untrained_and_trained_accuracy(build, omniglot, seed=seed)
        print(
            f"seed {seed}: untrained {result['untrained']:.3f}, trained {result['trained']:.3f} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
