"""Config files composed from shared pieces: a file may name the pieces it builds on in ``_base_``.

An experiment states its method and what differs from the shared settings::

    # experiments/omniglot/protonet_5w1s.yaml
    _base_: [../_base/trained.yaml, ../_base/omniglot.yaml, ../_base/conv4_grey.yaml, ../_base/adam.yaml]
    model:
      class_path: fsl_lightning.methods.ProtoNet
      ...

The pieces are read in order, then the file itself, each overriding the ones before it: mappings merge key by key,
anything else (numbers, strings, lists) is replaced whole, and a mapping whose ``class_path`` names another class
than the earlier one's replaces it whole (the earlier ``init_args`` belong to the earlier class). Paths in
``_base_`` are relative to the file that names them, and pieces may have pieces of their own.

Why a key of our own rather than LightningCLI's repeated ``--config``: the command stays
``fit --config experiments/<...>.yaml``, and the file alone says what it is made of. The command line hands
LightningCLI the one composed config (:func:`expand_config_arguments`), so the parser, ``--print_config`` and the
run's saved ``config.yaml`` see exactly what an uncomposed file with the same settings gives; files without
``_base_`` are passed on untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fsl_lightning.run.errors import UserError

BASE_KEY = "_base_"
CONFIG_OPTIONS = ("--config", "-c")


def load_config(path: str | Path) -> dict[str, Any]:
    """The settings of a config file with its ``_base_`` pieces merged in (a file without them: as written)."""
    return _composed(Path(path), chain=())


def expand_config_arguments(args: list[str]) -> list[str]:
    """``args`` with each ``--config <file>`` that has ``_base_`` pieces replaced by its composed settings."""
    expanded = list(args)
    for index, arg in enumerate(expanded):
        option, equals, value = arg.partition("=")
        if option not in CONFIG_OPTIONS:
            continue
        if equals and (composed := _composed_yaml(value)) is not None:
            expanded[index] = f"{option}={composed}"
        elif not equals and index + 1 < len(expanded) and (composed := _composed_yaml(expanded[index + 1])) is not None:
            expanded[index + 1] = composed
    return expanded


class _WithoutAliases(yaml.SafeDumper):
    """Writes a value shared by two keys of a piece (a YAML anchor) out at each, as the parser reads it anyway."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _composed_yaml(value: str) -> str | None:
    """The composed settings of the config file ``value`` as YAML text, or ``None`` when it names no ``_base_``
    pieces or is not a file (a YAML string, or a missing file: LightningCLI reports it)."""
    path = Path(value)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    settings = _read(path)
    if not (isinstance(settings, dict) and BASE_KEY in settings):
        return None
    return yaml.dump(_composed(path, chain=(), settings=settings), Dumper=_WithoutAliases, sort_keys=False)


def _composed(path: Path, chain: tuple[Path, ...], settings: Any = None) -> dict[str, Any]:
    """``path``'s settings (``settings`` when already read) over its pieces; ``chain``: the files naming it."""
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise UserError(f"{path}: its _base_ pieces name each other in a circle ({cycle}); remove one of them.")
    settings = _read(path) if settings is None else settings
    if not isinstance(settings, dict):
        raise UserError(f"{path}: a config file holds a mapping of settings (model:, data:, trainer:, ...).")
    composed: dict[str, Any] = {}
    for base in _base_files(path, settings.pop(BASE_KEY, [])):
        composed = merged(composed, _composed(base, (*chain, path.resolve())))
    return merged(composed, settings)


def _base_files(path: Path, bases: Any) -> list[Path]:
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise UserError(f"{path}: {BASE_KEY} is a file name or a list of them, relative to {path.parent}.")
    files = [path.parent / base for base in bases]
    for base, file in zip(bases, files):
        if not file.is_file():
            raise UserError(f"{path}: {BASE_KEY} names {base}, which is not a file (looked for {file.resolve()}).")
    return files


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None


def merged(earlier: Any, later: Any) -> Any:
    """``later`` over ``earlier``: mappings merge key by key; anything that is not a mapping, and a mapping naming
    another class than the earlier one's ``class_path``, replaces the earlier value."""
    if not (isinstance(earlier, dict) and isinstance(later, dict)):
        return later
    if "class_path" in earlier and "class_path" in later and later["class_path"] != earlier["class_path"]:
        return later
    result = dict(earlier)
    for key, value in later.items():
        result[key] = merged(earlier[key], value) if key in earlier else value
    return result
