"""Reading a dataset from its official archive or from the archive's extracted folder, and downloading it."""

from __future__ import annotations

import hashlib
import logging
import tarfile
import time
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Callable
from functools import cached_property
from pathlib import Path, PurePosixPath

from fsl_lightning.data.images import IMAGE_SUFFIXES
from fsl_lightning.data.roots import DatasetNotFoundError
from fsl_lightning.run.atomic_files import written_atomically

log = logging.getLogger(__name__)


def tar_member_bytes(stream: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The bytes of a regular-file member of ``stream`` (``extractfile`` gives ``None`` for any other kind)."""
    handle = stream.extractfile(member)
    if handle is None:
        raise tarfile.TarError(f"{member.name} is not a regular file")
    return handle.read()


class ImageArchive:
    """The images under one top folder (``top``), in a zip file or an extracted folder.

    Members are named by their path below ``top``, with forward slashes: ``Greek/character01/0394_01.png``.
    """

    def __init__(self, path: Path, top: str) -> None:
        self.path = path
        self.top = top

    @cached_property
    def _zip(self) -> zipfile.ZipFile | None:
        if self.path.is_dir():
            return None
        try:
            return zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as error:
            raise DatasetNotFoundError(
                f"{self.path} is not a readable zip archive ({error}). Delete it and download it again."
            ) from error

    def members(self) -> list[str]:
        if self._zip is None:
            return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if _is_image(p.name)]
        prefix = self.top + "/"
        return [n[len(prefix) :] for n in self._zip.namelist() if n.startswith(prefix) and _is_image(n)]

    def files_by_folder(self, depth: int) -> dict[str, list[str]]:
        """Image members grouped by their first ``depth`` folders (``Alphabet/characterNN`` for depth 2)."""
        groups: dict[str, list[str]] = defaultdict(list)
        for member in self.members():
            parts = PurePosixPath(member).parts
            if len(parts) == depth + 1:
                groups["/".join(parts[:depth])].append(member)
        return dict(groups)

    def read(self, member: str) -> bytes | Path:
        if self._zip is None:
            return self.path / member
        return self._zip.read(f"{self.top}/{member}")

    def describe(self, member: str) -> str:
        """Where a member lives, for error messages."""
        if self._zip is None:
            return str(self.path / member)
        return f"{self.path}:{self.top}/{member}"

    def close(self) -> None:
        """Closes the zip file, when one was opened."""
        zip_file = self.__dict__.get("_zip")  # the cached property, without opening the zip when it was not
        if zip_file is not None:
            zip_file.close()

    def stamp(self) -> tuple[str, int, int]:
        """Identifies this copy (path, size, modification time), so that caches notice a replaced file."""
        stat = self.path.stat()
        return str(self.path.resolve()), stat.st_size, stat.st_mtime_ns


def locate_archive(folder: Path, top: str, url: str | None, md5: str | None = None) -> ImageArchive:
    """Finds ``<folder>/<top>/`` or ``<folder>/<top>.zip``; downloads the zip from ``url`` when given, checked
    against ``md5``. A copy already on disk is accepted by its layout (its checksum may differ: a repacked zip)."""
    for candidate in (folder / top, folder / f"{top}.zip"):
        if candidate.exists():
            return ImageArchive(candidate, top)
    target = folder / f"{top}.zip"
    hint = (
        f"Dataset files not found: expected {target} (the official {top}.zip"
        + (f", from {url}" if url else "")
        + f") or its extracted folder {folder / top}/. Put them there, or point the data root at the folder "
        "that holds them (config key `root` of the dataset, or the FSL_DATA_ROOT environment variable)."
    )
    if url is None:
        raise DatasetNotFoundError(hint + " Downloading is off (download: false).")
    try:
        download_file(url, target, md5)
    except OSError as error:
        raise DatasetNotFoundError(f"{hint} Downloading it failed: {error}") from error
    return ImageArchive(target, top)


#: tries of a download before it is reported as failed (a dropped connection, or a file that fails its check)
DOWNLOAD_ATTEMPTS = 3


class DownloadCheckError(OSError):
    """A downloaded file is not the one expected (checksum or content)."""


def download_file(
    url: str,
    target: Path,
    md5: str | None,
    timeout_s: float = 60.0,
    check: Callable[[bytes], None] | None = None,
) -> None:
    """Downloads ``url`` to ``target`` through a temporary file that is checked before it takes ``target``'s name:
    against the publisher's ``md5`` (hashed as the bytes arrive), or, for a small file without a published
    checksum, by ``check`` on its bytes (it raises :class:`DownloadCheckError`). A dropped connection or a failed
    check is tried again, :data:`DOWNLOAD_ATTEMPTS` times in all; nothing is left at ``target`` unless a download
    passed. ``md5=None`` says on purpose that the file has no known checksum."""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            _download_checked(url, target, md5, timeout_s, check)
            return
        except OSError as error:  # URLError, timeouts and DownloadCheckError are OSErrors
            if attempt == DOWNLOAD_ATTEMPTS:
                raise
            log.warning(
                "Download of %s failed (%s); trying again (%d of %d)", url, error, attempt + 1, DOWNLOAD_ATTEMPTS
            )
            time.sleep(attempt)


def _download_checked(
    url: str, target: Path, md5: str | None, timeout_s: float, check: Callable[[bytes], None] | None
) -> None:
    log.info("Downloading %s to %s", url, target)
    digest, kept = hashlib.md5(usedforsecurity=False), bytearray()
    with written_atomically(target) as part, urllib.request.urlopen(url, timeout=timeout_s) as response:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            part.write(chunk)
            digest.update(chunk)
            if check is not None:
                kept += chunk
        if md5 is not None and digest.hexdigest() != md5:
            raise DownloadCheckError(
                f"the file downloaded from {url} has md5 {digest.hexdigest()}, not the published {md5} "
                "(changed at the source, or damaged on the way)"
            )
        if check is not None:
            check(bytes(kept))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)
