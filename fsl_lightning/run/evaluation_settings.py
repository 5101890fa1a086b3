"""Evaluating a checkpoint with the data settings it was trained with, and saying which ones a config changes.

``validate``, ``test`` and ``predict`` with ``--ckpt_path`` take the method and the data settings stored in the
checkpoint as their defaults; a config file or the command line may still change them on purpose. Changes to
what decides how inputs are prepared or which episodes are drawn get a warning; an image size or channel count
the model was not trained on is an error (see ``EpisodicDataModule.load_state_dict``).
"""

from __future__ import annotations

from typing import Any

EVALUATION_SUBCOMMANDS = ("validate", "test", "predict")

#: data settings that decide the inputs of each subcommand (the others only shape training)
_COMPARED = {
    "predict": ("dataset",),
    "validate": ("dataset", "evaluation", "evaluation_within_group", "val_episodes", "eval_seed"),
    "test": ("dataset", "evaluation", "evaluation_within_group", "test_episodes", "eval_seed"),
}
#: where the dataset's files are, not how its images are prepared
_LOCATION_KEYS = ("root", "download")


def changed_settings(subcommand: str, trained: dict[str, Any], used: dict[str, Any]) -> list[str]:
    """``data.<key>: <trained> -> <used>`` for each compared setting that differs from the checkpoint's training."""
    trained_values = _flat({key: trained.get(key) for key in _COMPARED[subcommand]}, "data")
    used_values = _flat({key: used.get(key) for key in _COMPARED[subcommand]}, "data")
    return [
        f"{key}: {trained_values.get(key)!r} -> {used_values.get(key)!r}"
        for key in sorted(set(trained_values) | set(used_values))
        if trained_values.get(key) != used_values.get(key) and key.rpartition(".")[2] not in _LOCATION_KEYS
    ]


def changed_settings_warning(checkpoint: str, changes: list[str]) -> str:
    return (
        f"The config changes data settings that {checkpoint} was trained with (trained -> used now): "
        f"{'; '.join(changes)}. Remove them from the config to evaluate as in training."
    )


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {key: leaf for name, item in value.items() for key, leaf in _flat(item, f"{prefix}.{name}").items()}
    return {prefix: value}
