"""Downloads are checked before they take their name (published md5, or the content for files without one), tried
again after a failure, and leave nothing behind when they fail. Served from file:// URLs: no network."""

from __future__ import annotations

import hashlib
import urllib.request
from urllib.error import URLError

import pytest

from fsl_lightning.data.datasets import archives, cifar, omniglot
from fsl_lightning.data.datasets.archives import DOWNLOAD_ATTEMPTS, DownloadCheckError, download_file
from fsl_lightning.data.datasets.omniglot import VINYALS_SPLIT_CLASSES, vinyals_split_check
from fsl_lightning.data.roots import DatasetNotFoundError


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A file to download (its URL and bytes), and a count of the connections opened."""
    monkeypatch.setattr(archives.time, "sleep", lambda seconds: None)
    source = tmp_path / "served" / "archive.zip"
    source.parent.mkdir()
    source.write_bytes(b"the published bytes" * 1000)
    opened = []
    real_urlopen = urllib.request.urlopen

    def counting_urlopen(url, *args, **kwargs):
        opened.append(url)
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counting_urlopen)
    return source.as_uri(), source.read_bytes(), opened


def test_a_download_with_its_published_md5_takes_its_name(served, tmp_path):
    url, content, opened = served
    target = tmp_path / "data" / "archive.zip"
    download_file(url, target, hashlib.md5(content).hexdigest())
    assert target.read_bytes() == content and len(opened) == 1
    assert [p.name for p in target.parent.iterdir()] == ["archive.zip"]  # no temporary file left


def test_a_download_that_fails_its_md5_is_tried_again_then_reported_and_nothing_is_kept(served, tmp_path):
    url, _, opened = served
    target = tmp_path / "data" / "archive.zip"
    with pytest.raises(DownloadCheckError, match=r"has md5 [0-9a-f]{32}, not the published 0{32}"):
        download_file(url, target, "0" * 32)
    assert len(opened) == DOWNLOAD_ATTEMPTS
    assert list(target.parent.iterdir()) == []


def test_a_dropped_connection_is_tried_again(served, tmp_path, monkeypatch):
    url, content, _ = served
    real_urlopen, calls = urllib.request.urlopen, []

    def drops_once(url, *args, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise URLError("connection reset")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", drops_once)
    target = tmp_path / "archive.zip"
    download_file(url, target, hashlib.md5(content).hexdigest())
    assert target.read_bytes() == content and len(calls) == 2


def test_an_omniglot_archive_that_is_not_the_official_one_is_refused_in_one_message(served, tmp_path, monkeypatch):
    url, _, _ = served
    monkeypatch.setattr(omniglot, "ARCHIVE_URL", url.replace("archive.zip", "{part}.zip"))
    (tmp_path / "served" / "archive.zip").rename(tmp_path / "served" / "images_background.zip")
    dataset = omniglot.Omniglot(protocol="lake", root=str(tmp_path / "root"), download=True)
    with pytest.raises(DatasetNotFoundError, match=r"Downloading it failed: .*not the published 68d2efa1"):
        dataset.prepare()
    assert not any((tmp_path / "root").rglob("*.zip"))


def test_the_vinyals_split_files_are_checked_by_their_content(data_root):
    for split, classes in VINYALS_SPLIT_CLASSES.items():
        vinyals_split_check(split)((data_root / "omniglot" / "vinyals_splits" / f"{split}.txt").read_bytes())
    with pytest.raises(DownloadCheckError, match=r"expected 1692 lines"):
        vinyals_split_check("test")(b"<html>404: Not Found</html>\n")
    with pytest.raises(DownloadCheckError, match=r"not Vinyals et al.'s split"):
        vinyals_split_check("val")(b"Latin/character01/rot045\n" * 688)


def test_the_checksums_are_the_ones_torchvision_records():
    from torchvision.datasets import CIFAR100
    from torchvision.datasets import Omniglot as TorchvisionOmniglot

    assert omniglot.ARCHIVE_MD5 == TorchvisionOmniglot.zips_md5
    assert cifar.DOWNLOAD_MD5 == CIFAR100.tgz_md5
