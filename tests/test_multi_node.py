"""Two nodes of one process each, simulated over localhost (gloo) through Lightning's own multi-node launch: each
process is started as torchrun or SLURM would start it on its node (``NODE_RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) with ``--trainer.num_nodes=2 --trainer.devices=1``.

* training: one step on 2 nodes equals one SGD step on the mean loss of the episodes keyed 0 and 1, so each node
  drew its own episode (distinct keys: disjoint training episodes) and the gradients were averaged;
* test: the same checkpoint gives the same accuracy line on 2 nodes as in one process (the fixed test episodes
  shared out between the nodes and gathered);
* the checkpoint is written once, by global rank 0.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from fsl_lightning.data import EpisodicDataModule
from test_ddp_training import CONFIG, ONE_STEP, SGD, SPEC, expected_ddp_step

NODES = ["--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_two_nodes(arguments: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Runs ``python -m fsl_lightning <arguments>`` as node 0 and node 1 of a two-node job on this machine."""
    port = free_port()
    processes = []
    for node in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_RANK": str(node),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
        }
        command = [sys.executable, "-m", "fsl_lightning", *arguments, *NODES]
        processes.append(
            subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    for node, result in enumerate(results):
        assert result.returncode == 0, f"node {node}:\n{result.stderr[-3000:]}"
    return results


def accuracy_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("Test accuracy:")]
    assert len(lines) == 1, stdout[-3000:]
    return lines[0]


def test_two_simulated_nodes_train_on_their_own_episodes_and_test_as_one_process(omniglot, tmp_path):
    out = tmp_path / "two_nodes"
    fit = [
        "fit",
        "--config",
        CONFIG,
        *ONE_STEP,
        f"--trainer.logger.init_args.save_dir={out}",
        f"--model.init_args.optimizer={SGD}",
    ]
    on_two_nodes(fit, tmp_path)
    (checkpoint,) = out.glob("*/version_*/checkpoints/last.ckpt")  # one run folder, one checkpoint: written once
    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]

    initial = tmp_path / "initial"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fsl_lightning",
            *fit[:-2],
            f"--trainer.logger.init_args.save_dir={initial}",
            "--model.init_args.optimizer.init_args.lr=0.0",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (start,) = initial.glob("*/version_0/checkpoints/last.ckpt")
    datamodule = EpisodicDataModule(omniglot, train=SPEC, evaluation=SPEC)
    expected = expected_ddp_step(torch.load(start, map_location="cpu", weights_only=False)["state_dict"], datamodule)
    for name, weight in expected.items():
        assert torch.allclose(trained[name], weight, atol=1e-5), name

    test = [
        "test",
        "--config",
        CONFIG,
        *ONE_STEP,
        "--data.test_episodes=41",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'test'}",
        "--ckpt_path",
        str(checkpoint),
    ]
    single = subprocess.run([sys.executable, "-m", "fsl_lightning", *test], capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    node0, node1 = on_two_nodes(test, tmp_path)
    assert "41 episodes" in accuracy_line(single.stdout)
    assert accuracy_line(node0.stdout) == accuracy_line(single.stdout)
    assert "MEMBER: 2/2" in node1.stdout + node1.stderr, "node 1 did not join as the second member"
