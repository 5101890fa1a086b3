"""Weights & Biases without waiting: offline whenever the server cannot be used right now.

With no API key, or no route to the server, ``wandb.init`` can block for minutes. We decide up front: such runs
are written offline (``WANDB_MODE=offline``) into the run folder, and ``wandb sync <folder>`` uploads them later.
"""

from __future__ import annotations

import netrc
import os
import socket
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"


def choose_wandb_mode(timeout_s: float = 3.0) -> str | None:
    """Sets ``WANDB_MODE=offline`` when W&B cannot be reached; returns why, or ``None`` if nothing changed.

    A ``WANDB_MODE`` already set by the user is respected as it is.
    """
    if os.environ.get("WANDB_MODE"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname or "api.wandb.ai"
    if not _has_api_key(host):
        reason = "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    elif not _reachable(host, timeout_s):
        reason = f"{host} cannot be reached"
    else:
        return None
    os.environ["WANDB_MODE"] = "offline"
    return reason


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout_s: float) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False
