"""Real Omniglot characters laid out as a user gives them to ``predict``: a support folder and a query folder."""

from __future__ import annotations

import zipfile
from pathlib import Path


def support_and_query_folders(data_root: Path, tmp_path: Path, characters: int, queries_per_class: int):
    """Real Omniglot evaluation characters as a user would lay them out: drawer 01 is the support image."""
    support, queries = tmp_path / "support", tmp_path / "queries"
    truth = {}
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        for class_index, character in enumerate(sorted({n.rsplit("/", 1)[0] for n in names})[::131][:characters]):
            label = f"class_{class_index}"
            files = [n for n in names if n.startswith(character + "/")][: 1 + queries_per_class]
            (support / label).mkdir(parents=True)
            (support / label / "example.png").write_bytes(archive.read(files[0]))
            for number, name in enumerate(files[1:]):
                target = queries / f"{label}_{number}.png"
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(archive.read(name))
                truth[str(target)] = label
    return support, queries, truth
