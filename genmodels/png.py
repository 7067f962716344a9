"""A tiny PNG encoder and decoder for 8-bit grayscale images (zlib only, no PIL)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 array (grayscale, bit depth 8, filter 0 on every row)."""
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"encode_png expects a 2-D uint8 array, got {img.dtype} {img.shape}")
    h, w = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def decode_png(data: bytes) -> np.ndarray:
    """The uint8 array of an 8-bit grayscale, non-interlaced PNG (every filter type); checks CRCs."""
    if data[:8] != _SIGNATURE:
        raise ValueError("not a PNG file (bad signature)")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos: pos + 4])
        tag, body = data[pos + 4: pos + 8], data[pos + 8: pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n: pos + 12 + n])
        if zlib.crc32(tag + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"PNG chunk {tag!r} has a bad CRC")
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        elif tag == b"IEND":
            break
        pos += 12 + n
    if header is None:
        raise ValueError("PNG has no IHDR chunk")
    w, h, depth, color, _, _, interlace = header
    if depth != 8 or color != 0 or interlace != 0:
        raise ValueError("only 8-bit grayscale non-interlaced PNGs are supported")
    raw = zlib.decompress(idat)
    out = np.zeros((h, w), np.uint8)
    prev = [0] * w
    for y in range(h):
        f, row = raw[y * (w + 1)], list(raw[y * (w + 1) + 1: (y + 1) * (w + 1)])
        for x in range(w):
            a = row[x - 1] if x else 0
            c = prev[x - 1] if x else 0
            b = prev[x]
            pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[f] if f <= 4 else None
            if pred is None:
                raise ValueError(f"PNG row {y} has unknown filter {f}")
            row[x] = (row[x] + pred) & 0xFF
        out[y] = row
        prev = row
    return out


def tile(images: list[np.ndarray], cols: int, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Images side by side in a grid (for looking at samples), each upscaled ``scale`` times."""
    imgs = [np.kron(np.asarray(i, np.uint8), np.ones((scale, scale), np.uint8)) for i in images]
    h, w = imgs[0].shape
    rows = (len(imgs) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 255, np.uint8)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out
