"""Entry point for Weights & Biases sweep agents.

A sweep config (``experiments/sweeps/``) names hyper-parameters either by their full CLI key
(``model.init_args.optimizer.init_args.lr``) or by a short alias below; ``wandb agent`` runs this module with
``--<name>=<value>`` for each, and we run ``fit`` (then ``test``) with the matching CLI overrides::

    python -m fsl_lightning.sweep --config experiments/omniglot/protonet_20w1s.yaml \\
        --config experiments/loggers/wandb.yaml --lr=0.0005 --shot=5 --backbone=resnet12
"""

from __future__ import annotations

import sys

from fsl_lightning.backbones import BACKBONES
from fsl_lightning.cli import main as cli_main

#: short name -> the CLI keys it sets
ALIASES: dict[str, tuple[str, ...]] = {
    "lr": ("model.init_args.optimizer.init_args.lr",),
    "way": ("data.train.way",),
    "shot": ("data.train.shot", "data.evaluation.shot"),
    "query": ("data.train.query",),
    "backbone": ("model.init_args.backbone",),
    "max_steps": ("trainer.max_steps",),
    "seed": ("seed_everything", "data.seed"),
}


def translate(args: list[str]) -> list[str]:
    """Maps ``--alias=value`` arguments onto CLI overrides; other arguments pass through unchanged."""
    translated = []
    for arg in args:
        key, has_value, value = arg.removeprefix("--").partition("=")
        if not (arg.startswith("--") and has_value and key in ALIASES):
            translated.append(arg)
            continue
        if key == "backbone":
            value = _backbone_class_path(value)
        translated += [f"--{target}={value}" for target in ALIASES[key]]
    return translated


def _backbone_class_path(name: str) -> str:
    if "." in name:
        return name
    try:
        backbone = BACKBONES[name.lower()]
    except KeyError:
        raise SystemExit(
            f"error: unknown backbone {name!r} in the sweep; choose one of {', '.join(BACKBONES)}."
        ) from None
    return f"{backbone.__module__.rsplit('.', 1)[0]}.{backbone.__name__}"


def main(argv: list[str] | None = None) -> None:
    cli_main(["fit", *translate(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
