"""A small PNG reader (8-bit RGB or RGBA, not interlaced: what Chromium's screenshots are) and
a count of the separate spots of one colour, for checking what a browser really drew."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Image:
    """Decoded pixels: `rows[y][x * channels : x * channels + 3]` is the RGB of (x, y)."""

    width: int
    height: int
    channels: int
    rows: list[bytes]

    def rgb(self, x: int, y: int) -> tuple[int, int, int]:
        """Returns the colour of pixel (x, y)."""
        start = x * self.channels
        red, green, blue = self.rows[y][start : start + 3]
        return red, green, blue


def _paeth(left: int, up: int, corner: int) -> int:
    estimate = left + up - corner
    pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
    if pa <= pb and pa <= pc:
        return left
    return up if pb <= pc else corner


def _unfilter(kind: int, line: bytearray, previous: bytes, step: int) -> bytes:
    """Returns one scanline with its PNG filter undone."""
    if kind == 1:
        for i in range(step, len(line)):
            line[i] = (line[i] + line[i - step]) & 0xFF
    elif kind == 2:
        for i in range(len(line)):
            line[i] = (line[i] + previous[i]) & 0xFF
    elif kind == 3:
        for i in range(len(line)):
            left = line[i - step] if i >= step else 0
            line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(len(line)):
            left = line[i - step] if i >= step else 0
            corner = previous[i - step] if i >= step else 0
            line[i] = (line[i] + _paeth(left, previous[i], corner)) & 0xFF
    elif kind != 0:
        raise ValueError(f"unknown PNG filter {kind}")
    return bytes(line)


def read(path: Path) -> Image:
    """Returns the pixels of the PNG file at `path`."""
    data = path.read_bytes()
    if not data.startswith(SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    position, compressed = len(SIGNATURE), b""
    width = height = channels = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"{path}: only 8-bit RGB/RGBA, not interlaced, is read here")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(compressed)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        line = _unfilter(
            raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
        )
        rows.append(line)
        previous = line
    return Image(width, height, channels, rows)


def spots(image: Image, colour: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Returns (x, y, pixels) of each 8-connected spot of exactly `colour`, top to bottom."""
    target = bytes(colour)
    step = image.channels
    matching = {
        (x, y)
        for y, row in enumerate(image.rows)
        for x in range(image.width)
        if row[x * step : x * step + 3] == target
    }
    found = []
    while matching:
        seed = matching.pop()
        pending, members = [seed], [seed]
        while pending:
            x, y = pending.pop()
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    neighbour = (x + dx, y + dy)
                    if neighbour in matching:
                        matching.remove(neighbour)
                        pending.append(neighbour)
                        members.append(neighbour)
        found.append((min(x for x, _ in members), min(y for _, y in members), len(members)))
    return sorted(found, key=lambda spot: (spot[1], spot[0]))
