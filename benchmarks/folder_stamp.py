"""CPU time of the image-folder cache check (``folder_stamp``: every file's path, size and mtime) on a folder.

python benchmarks/folder_stamp.py <folder>      # e.g. Omniglot's two archives extracted: 32,460 PNGs
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from fsl_lightning.data.decoded_cache import folder_stamp


def main(folder: Path, rounds: int = 5) -> None:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        folder_stamp(folder, (".png", ".jpg", ".jpeg"))
        times.append(time.process_time() - start)
    files = sum(1 for _ in folder.rglob("*.png"))
    print(
        f"folder_stamp over {folder} ({files} PNG files): median CPU {statistics.median(times) * 1000:.0f} ms "
        f"over {rounds} runs"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
