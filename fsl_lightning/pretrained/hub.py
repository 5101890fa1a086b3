"""Pretrained weights from the Hugging Face Hub or a URL, cached; offline, an error that says how to provide them.

Never a silent fallback: a backbone that asked for pretrained weights either gets them or raises
:class:`~fsl_lightning.backbones.torchvision_backbone.PretrainedWeightsUnavailableError`, whose message names the
file, where to put it, and the config key that takes a local path instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch

from fsl_lightning.backbones.torchvision_backbone import PretrainedWeightsUnavailableError

HUB_URL = "https://huggingface.co"


def hugging_face_cache_folder(repo_id: str, cache_dir: str | None = None) -> Path:
    """Where ``huggingface_hub`` keeps the files of a model repository (``$HF_HUB_CACHE/models--org--name``)."""
    from huggingface_hub import constants

    root = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    return root / ("models--" + repo_id.replace("/", "--"))


def download_from_hugging_face(
    repo_id: str, filenames: Sequence[str], what: str, path_key: str, cache_dir: str | None = None, note: str = ""
) -> str:
    """The local path of the first of ``filenames`` that the repository has, downloaded once into the Hub cache.

    Several names because repositories hold either a safetensors file or a pickled one; offline, each is looked
    for in the cache. ``what`` (e.g. "timm vit_small_patch14_dinov2.lvd142m"), ``path_key`` (the config key
    that takes a local file instead) and ``note`` (a last sentence) go into the error message.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    last_error: Exception | None = None
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
        except EntryNotFoundError as error:  # not in this repository, or offline and not cached: try the next name
            last_error = error
        except Exception as error:  # network, HTTP or authentication failure: the other names would fail alike
            last_error = error
            break
    raise PretrainedWeightsUnavailableError(
        f"Could not get the {what} weights from the Hugging Face Hub (repository {repo_id}, file "
        f"{' or '.join(filenames)}): {str(last_error).rstrip('.')}. On a machine without internet, either download "
        f"{HUB_URL}/{repo_id}/resolve/main/{filenames[0]} elsewhere and set `{path_key}: <path to that file>` in the "
        f"backbone's config, or copy the Hub cache folder {hugging_face_cache_folder(repo_id, cache_dir)} from a "
        "machine that loaded the model to the same place here (the cache is $HF_HUB_CACHE; set HF_HUB_OFFLINE=1 "
        f"to skip the network). `pretrained: null` gives random weights instead.{note}"
    ) from last_error


def download_from_url(url: str, folder: str | Path, what: str, path_key: str, note: str = "") -> str:
    """The local path of ``url``'s file in ``folder``, downloaded there once; offline, an error naming that path."""
    target = Path(folder).expanduser() / os.path.basename(urlparse(url).path)
    if target.is_file():
        return str(target)
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(partial), progress=True)
    except Exception as error:  # URLError, HTTPError, socket errors, a read-only folder
        raise PretrainedWeightsUnavailableError(
            f"Could not download the {what} weights from {url} ({str(error).rstrip('.')}). On a machine without "
            f"internet, copy that file to {target}, or set `{path_key}: <path to that file>` in the backbone's "
            f"config. `pretrained: null` gives random weights instead.{note}"
        ) from error
    partial.replace(target)
    return str(target)
