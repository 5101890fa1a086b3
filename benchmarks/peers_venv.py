"""The peers' virtual environment, ``benchmarks/.peers-venv`` (git-ignored): easyfsl 1.5, never a project dependency.

It sees the project's own packages (torch, numpy, learn2learn, fsl_lightning) through a ``.pth`` file, so that no
second torch is downloaded and every system runs on the very same torch build. Used by ``protonet_reference.py``
(``setup``) and ``peers_cpu.py`` (on its own, when the venv is missing).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

PEERS = Path(__file__).resolve().parent / ".peers-venv"
PEER_PYTHON = PEERS / "bin" / "python"
#: easyfsl (without its pins), then what its code imports that the project does not install (pandas; matplotlib for
#: ``easyfsl.utils``, home of its ``evaluate`` loop); numpy and torch are the project's
PEER_PACKAGES = ("easyfsl==1.5.*", "pandas", "matplotlib")


def setup_peers() -> None:
    """Creates (or completes) the venv with the peers, reading the project's packages from the running interpreter's
    site-packages: run this with the project's Python."""
    if not PEER_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    project_site = sysconfig.get_paths()["purelib"]
    peer_site = next((PEERS / "lib").glob("python3.*/site-packages"))
    # addsitedir (not a bare path) so that the project's own .pth files (its editable install) are read too.
    (peer_site / "project-venv.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
    subprocess.run([str(PEER_PYTHON), "-m", "pip", "install", "--no-deps", PEER_PACKAGES[0]], check=True)
    subprocess.run([str(PEER_PYTHON), "-m", "pip", "install", *PEER_PACKAGES[1:]], check=True)


def ensure_peers() -> Path:
    """The peer venv's Python, after setting the venv up if it cannot import the peers yet."""
    check = [str(PEER_PYTHON), "-c", "import easyfsl.utils, torch"]
    if not PEER_PYTHON.exists() or subprocess.run(check, capture_output=True).returncode != 0:
        setup_peers()
    return PEER_PYTHON
