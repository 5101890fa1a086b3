"""Image files of every awkward kind a user's folder may hold, written from scratch (no fixture files): for the
tests of image decoding and for ``benchmarks/predict_memory.py``."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, rows) -> Path:
    """A PNG written chunk by chunk from ``rows`` (an iterable of raw row bytes, without the filter byte), so that
    huge images cost no memory to write."""
    compressor = zlib.compressobj(9)
    with path.open("wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)))
        pending = bytearray()
        for row in rows:
            pending += compressor.compress(b"\x00" + row)
            if len(pending) > 1 << 20:
                handle.write(png_chunk(b"IDAT", bytes(pending)))
                pending.clear()
        pending += compressor.flush()
        handle.write(png_chunk(b"IDAT", bytes(pending)))
        handle.write(png_chunk(b"IEND", b""))
    return path


def decompression_bomb(path: Path, side: int = 20000) -> Path:
    """A black 1-bit PNG of ``side`` x ``side`` pixels (20000: 400 megapixels in about 60 KB)."""
    row = bytes((side + 7) // 8)
    return write_png(path, side, side, 1, 0, (row for _ in range(side)))


def sixteen_bit_grey(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit greyscale PNG of ``pixels`` (uint16 [H, W])."""
    return write_png(path, pixels.shape[1], pixels.shape[0], 16, 0, (row.astype(">u2").tobytes() for row in pixels))


def sixteen_bit_rgb(path: Path, pixels: np.ndarray) -> Path:
    """A 48-bit RGB PNG of ``pixels`` (uint16 [H, W, 3])."""
    return write_png(path, pixels.shape[1], pixels.shape[0], 16, 2, (row.astype(">u2").tobytes() for row in pixels))


def cmyk_jpeg(path: Path, rgb: Image.Image) -> Path:
    rgb.convert("CMYK").save(path, quality=95)
    return path


def palette_with_transparency(path: Path, picture: Image.Image) -> Path:
    """``picture`` (RGBA) as a palette PNG whose transparent colour is black: its transparent pixels are black in
    the palette, so a conversion that ignores transparency makes them black."""
    palette = picture.convert("RGB").quantize(colors=255)
    indices = np.asarray(palette).copy()
    indices[np.asarray(picture)[:, :, 3] == 0] = 255
    colours = (palette.getpalette() or [])[: 255 * 3]
    colours += [0] * (255 * 3 - len(colours)) + [0, 0, 0]
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette(colours)
    image.save(path, transparency=255)
    return path


def animated_gif(path: Path, frames: list[Image.Image]) -> Path:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def exif_rotated_jpeg(path: Path, upright: Image.Image) -> Path:
    """``upright`` stored turned 90 degrees anticlockwise, with the EXIF orientation (6) that tells viewers to turn
    it 90 degrees clockwise: shown, it is ``upright`` again."""
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    return path


def truncated(path: Path, image: Image.Image, keep: float = 0.5) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def not_an_image(path: Path) -> Path:
    path.write_text("these are notes, not pixels\n")
    return path


def symlink_loop(path: Path) -> Path:
    os.symlink(path.name, path)
    return path


def broken_symlink(path: Path) -> Path:
    os.symlink(path.parent.resolve() / "no_such_file.png", path)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path
