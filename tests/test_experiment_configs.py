"""Every experiment config: it parses, says where its recipe comes from, and resolves to the recorded settings.

The experiments are composed from shared pieces (``experiments/_base/``, named by ``_base_``). What a run uses is
the resolved config that ``--print_config`` shows; its digest is recorded per experiment in
``tests/resolved_experiment_configs.json``, so that moving a setting into or out of a shared piece cannot change
any experiment unnoticed. After a deliberate change of an experiment (or of a default it inherits), record again::

    .venv/bin/python tests/test_experiment_configs.py --record
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).with_name("resolved_experiment_configs.json")
# experiments/loggers/ holds overlays (tested with W&B), experiments/sweeps/ W&B sweep specs, _base/ the shared pieces
NOT_EXPERIMENTS = ("loggers", "sweeps", "_base")
EXPERIMENT_CONFIGS = sorted(
    p for p in (REPO / "experiments").rglob("*.yaml") if not set(p.relative_to(REPO).parts) & set(NOT_EXPERIMENTS)
)


def resolved_config(config: Path) -> dict:
    """What ``python -m fsl_lightning fit --config <config> --print_config`` prints, as a dict."""
    from fsl_lightning.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None), f"{config}: --print_config failed"
    return yaml.safe_load(printed.getvalue())


def digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _name(config: Path) -> str:
    return str(config.relative_to(REPO / "experiments"))


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=_name)
def test_every_experiment_resolves_to_its_recorded_settings(config):
    settings = resolved_config(config)
    assert "class_path" in settings["model"]
    recorded = json.loads(RECORD.read_text()).get(_name(config))
    assert recorded == digest(settings), (
        f"the resolved config of experiments/{_name(config)} changed (or is new); if that is intended, record it: "
        "python tests/test_experiment_configs.py --record"
    )


def test_the_record_names_exactly_the_experiments():
    assert sorted(json.loads(RECORD.read_text())) == sorted(map(_name, EXPERIMENT_CONFIGS))


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=_name)
def test_every_experiment_config_says_where_its_recipe_comes_from(config):
    """A "# Recipe source:" line in the header: a paper section or reference file, or "none" and whose choice it is."""
    header = config.read_text().partition("\n_base_:")[0].partition("\nseed_everything:")[0]
    assert "# Recipe source: " in header, f"experiments/{_name(config)} does not say where its recipe comes from"


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    sys.argv = sys.argv[:1]  # LightningCLI warns when it is given arguments beside a command line
    RECORD.write_text(json.dumps({_name(c): digest(resolved_config(c)) for c in EXPERIMENT_CONFIGS}, indent=1) + "\n")
    print(f"recorded {len(EXPERIMENT_CONFIGS)} experiments in {RECORD.relative_to(REPO)}")
