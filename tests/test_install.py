"""The installed environment: learn2learn (built from its sdist by install.sh) imports and works."""

import torch


def test_learn2learn_imports_and_adapts_a_functional_clone():
    import learn2learn as l2l

    model = torch.nn.Linear(3, 1)
    maml = l2l.algorithms.MAML(model, lr=0.1)
    learner = maml.clone()
    loss = learner(torch.ones(1, 3)).pow(2).sum()
    learner.adapt(loss)
    # the adapted weights differ from the originals, which stay untouched
    assert not torch.allclose(learner.module.weight, model.weight)
    from learn2learn.data import task_dataset  # one of the Cython extensions rebuilt by the installer

    assert task_dataset.TaskDataset is not None


def test_the_environment_has_the_pinned_versions_of_constraints_txt():
    """install.sh installs constraints.txt's versions (unless FSL_NEWEST=1 asked for the newest)."""
    import os
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    import pytest

    if os.environ.get("FSL_NEWEST") == "1":
        pytest.skip("installed with FSL_NEWEST=1: the newest versions, not the pinned ones")
    pins = [
        line.split("==")
        for line in (Path(__file__).parents[1] / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert any(name == "lightning" for name, _ in pins), "constraints.txt must pin Lightning"
    different = []
    for name, pinned in pins:
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a dependency of another platform (CUDA libraries on Linux) or of an optional extra
        if installed != pinned:
            different.append(f"{name} {installed} (pinned {pinned})")
    assert not different, f"not the pinned versions: {', '.join(different)}; run ./install.sh"
