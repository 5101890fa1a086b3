"""What the reference benchmarks (``maml_reference.py``, ``protonet_reference.py``) keep of each trained network."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_result(out: Path, name: str, state: dict, seconds: float, command: str) -> None:
    """Writes ``<out>/<name>.pt`` (the weights, on the CPU) and ``<name>.json`` (training time, command)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save({key: value.detach().cpu() for key, value in state.items()}, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps({"seconds": seconds, "command": command}, indent=1))
    print(f"{name}: trained in {seconds:.0f} s, saved to {out / name}.pt")
