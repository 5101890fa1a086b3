"""Config files composed of ``_base_`` pieces: the merge rules, the paths, bad pieces, and the command line."""

from __future__ import annotations

import contextlib
import io
import sys
import textwrap
import warnings

import pytest
import yaml

from fsl_lightning.cli import main
from fsl_lightning.run.composed_configs import expand_config_arguments, load_config, merged
from fsl_lightning.run.errors import UserError


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_mappings_merge_and_everything_else_is_replaced():
    earlier = {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"k": 1}}
    later = {"a": {"y": [3], "z": 2}, "b": {"now": "a mapping"}, "c": None}
    assert merged(earlier, later) == {"a": {"x": 1, "y": [3], "z": 2}, "b": {"now": "a mapping"}, "c": None}
    assert earlier == {"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"k": 1}}  # the inputs are left as they were


def test_a_class_replaces_another_class_whole_but_merges_with_its_own_and_with_bare_arguments():
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001, "betas": [0.5, 0.9]}}
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
    assert merged(adam, sgd) == sgd  # Adam's betas mean nothing to SGD
    assert merged(adam, {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}) == {
        "class_path": "torch.optim.Adam",
        "init_args": {"lr": 0.01, "betas": [0.5, 0.9]},
    }
    # a piece that sets a method's arguments (its backbone) before the experiment names the method
    piece = {"init_args": {"backbone": {"class_path": "Conv4"}}}
    method = {"class_path": "ProtoNet", "init_args": {"distance": "euclidean"}}
    assert merged(piece, method) == {
        "class_path": "ProtoNet",
        "init_args": {"backbone": {"class_path": "Conv4"}, "distance": "euclidean"},
    }


def test_pieces_are_read_in_order_relative_to_the_file_that_names_them_then_the_file_itself(tmp_path):
    _write(tmp_path / "shared/root.yaml", "seed_everything: 1\ntrainer: {max_steps: 10, log_every_n_steps: 5}\n")
    _write(tmp_path / "shared/more.yaml", "_base_: root.yaml\ntrainer: {max_steps: 20}\n")
    _write(tmp_path / "shared/other.yaml", "trainer: {max_steps: 30, devices: 1}\n")
    config = _write(
        tmp_path / "exp/run.yaml", "_base_: [../shared/more.yaml, ../shared/other.yaml]\nseed_everything: 2\n"
    )
    assert load_config(config) == {
        "seed_everything": 2,
        "trainer": {"max_steps": 30, "log_every_n_steps": 5, "devices": 1},
    }


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: a.yaml\n"}, r"in a circle"),
        ({"a.yaml": "_base_: [missing.yaml]\n"}, r"_base_ names missing\.yaml, which is not a file"),
        ({"a.yaml": "_base_: {b: 1}\n"}, r"_base_ is a file name or a list of them"),
        ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "- a list\n"}, r"b\.yaml: a config file holds a mapping"),
        ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "x: [unclosed\n"}, r"b\.yaml is not valid YAML"),
    ],
)
def test_bad_pieces_are_named_in_one_line(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(UserError, match=message) as error:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(error.value)


def test_only_composed_config_files_are_expanded(tmp_path):
    plain = _write(tmp_path / "plain.yaml", "seed_everything: 3\n")
    composed = _write(tmp_path / "composed.yaml", "_base_: plain.yaml\ntrainer: {max_steps: 4}\n")
    untouched = ["fit", "--config", str(plain), "--config=not_a_file.yaml", "--trainer.max_steps=5"]
    assert expand_config_arguments(untouched) == untouched
    expanded = expand_config_arguments(["fit", "-c", str(composed), f"--config={composed}"])
    assert yaml.safe_load(expanded[2]) == yaml.safe_load(expanded[3].partition("=")[2]) == load_config(composed)


def test_the_command_line_composes_a_users_own_config_and_its_options_still_win(tmp_path):
    _write(tmp_path / "base.yaml", "seed_everything: 7\ntrainer: {max_steps: 11, log_every_n_steps: 3}\n")
    config = _write(
        tmp_path / "mine.yaml",
        """\
        _base_: base.yaml
        model: {class_path: fsl_lightning.methods.ProtoNet}
        trainer: {max_steps: 12}
        """,
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--trainer.log_every_n_steps=4", "--print_config"])
    settings = yaml.safe_load(printed.getvalue())
    assert settings["seed_everything"] == 7 and settings["model"]["class_path"].endswith("ProtoNet")
    assert (settings["trainer"]["max_steps"], settings["trainer"]["log_every_n_steps"]) == (12, 4)


def test_a_composed_config_on_the_real_command_line_gives_no_warning_about_args(tmp_path, monkeypatch):
    """Handing LightningCLI the composed command line must not look like arguments given beside a command line."""
    _write(tmp_path / "base.yaml", "seed_everything: 7\n")
    config = _write(tmp_path / "mine.yaml", "_base_: base.yaml\nmodel: {class_path: fsl_lightning.methods.ProtoNet}\n")
    monkeypatch.setattr(sys, "argv", ["fsl_lightning", "fit", "--config", str(config), "--print_config"])
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main()
    assert not [w for w in caught if "args parameter" in str(w.message)]


def test_a_bad_piece_stops_the_command_with_its_line(tmp_path):
    config = _write(tmp_path / "mine.yaml", "_base_: gone.yaml\n")
    with pytest.raises(SystemExit, match=r"^error: .*mine\.yaml: _base_ names gone\.yaml, which is not a file"):
        main(["fit", "--config", str(config)])
