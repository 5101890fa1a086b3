"""The Dockerfile cannot be built here (no Docker engine): check what can be checked without building it."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def test_every_copied_path_exists_in_the_repository():
    sources = [source for line in DOCKERFILE.splitlines() if line.startswith("COPY ") for source in line.split()[1:-1]]
    assert "install.sh" in sources and "fsl_lightning/" in sources
    for source in sources:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_image_installs_as_the_readme_does_and_runs_the_cli():
    readme = (REPO / "README.md").read_text()
    assert "./install.sh" in readme and re.search(r"^RUN \./install\.sh", DOCKERFILE, re.MULTILINE)
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.MULTILINE).group(1)
    assert json.loads(entrypoint) == ["python", "-m", "fsl_lightning"]
    assert (REPO / "fsl_lightning" / "__main__.py").exists()


def test_configs_named_in_the_docker_readme_exist():
    readme = (REPO / "docker" / "README.md").read_text()
    for config in re.findall(r"/opt/fsl_lightning/(experiments/\S+\.yaml)", readme):
        assert (REPO / config).exists(), config
