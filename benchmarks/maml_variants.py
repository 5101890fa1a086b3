"""MAML on cbfinn/maml's network against the network this project used before, in the setting of its
accuracy test (``tests/test_maml_measured.py``: 300 meta-iterations of 4 5-way 1-shot 5-query Omniglot tasks,
32-filter strided MAMLConv4, Adam 3e-3, inner step 0.4, 1 step in training and 3 at test, 200 fixed test episodes),
seeds 0, 1 and 2.

    OMP_NUM_THREADS=1 python benchmarks/maml_variants.py reference   # or another variant below

* ``reference``: MAMLConv4's defaults (Glorot-uniform convolutions, N(0, 1) head, zero biases; batch norm with an
  offset only, eps 1e-3) and MAML's (batch norm held out of the inner loop).
* ``previous``: PyTorch's initialisation, batch norm with a scale and eps 1e-5, every parameter adapted (the
  network of the test's bar).
* ``reference_adapting_batch_norm``: the reference network, batch norm's offset adapted too.
* ``reference_with_pytorch_initialisation``: the reference's batch norm (offset only, eps 1e-3, held out of the inner
  loop) with PyTorch's initialisation: what the initialisation alone changes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_maml_measured as measured  # noqa: E402  (the test holds the setting)
from fsl_lightning.data import Omniglot  # noqa: E402
from fsl_lightning.run.cpu_features import this_cpu  # noqa: E402


def reference_adapting_batch_norm():
    return measured.reference_maml(adapt_batch_norm=True)


def reference_with_pytorch_initialisation():
    return measured.reference_maml(initialisation="pytorch")


VARIANTS = {
    "reference": measured.reference_maml,
    "previous": measured.calibrated_maml,
    "reference_adapting_batch_norm": reference_adapting_batch_norm,
    "reference_with_pytorch_initialisation": reference_with_pytorch_initialisation,
}


def main() -> None:
    variant = sys.argv[1]
    print(f"CPU: {this_cpu().description()}; MAML, {variant}")
    omniglot = Omniglot(protocol="vinyals")
    for seed in (0, 1, 2):
        start = time.time()
        with tempfile.TemporaryDirectory() as root:
            accuracy = measured.trained_accuracy(VARIANTS[variant], omniglot, Path(root), seed=seed)
        print(f"seed {seed}: trained {accuracy:.3f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
