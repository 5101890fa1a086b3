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
