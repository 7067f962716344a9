"""A tiny plotting helper on numpy + zlib: line charts (with a shaded spread) and grouped bar charts
written as PNG, in the style of the papers' figures. No matplotlib (not a project dependency).

Text uses the classic 5x7 bitmap font (column bytes, bit 0 = top row), scaled by an integer factor.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

_FONT_HEX = (
    "0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649552250 0005030000 001c224100 "
    "0041221c00 082a1c2a08 08083e0808 0050300000 0808080808 0060600000 2010080402 3e5149453e 00427f4000 "
    "4261514946 2141454b31 1814127f10 2745454539 3c4a494930 0171090503 3649494936 064949291e 0036360000 "
    "0056360000 0008142241 1414141414 4122140800 0201510906 324979413e 7e1111117e 7f49494936 3e41414122 "
    "7f4141221c 7f49494941 7f09090101 3e41415132 7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 "
    "7f0204027f 7f0408107f 3e4141413e 7f09090906 3e4151215e 7f09192946 4649494931 01017f0101 3f4040403f "
    "1f2040201f 7f2018207f 6314081463 0304780403 6151494543 00007f4141 0204081020 41417f0000 0402010204 "
    "4040404040 0001020400 2054545478 7f48444438 3844444420 384444487f 3854545418 087e090102 081454543c "
    "7f08040478 00447d4000 2040443d00 007f102844 00417f4000 7c04180478 7c08040478 3844444438 7c14141408 "
    "081414187c 7c08040408 4854545420 043f444020 3c4040207c 1c2040201c 3c4030403c 4428102844 0c5050503c "
    "4464544c44 0008364100 00007f0000 0041360800 08082a1c08"
)
_GLYPHS = {chr(32 + i): bytes.fromhex(h) for i, h in enumerate(_FONT_HEX.split())}

# colour cycle close to the usual paper palette
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
MARKERS = ["o", "s", "^", "D", "v", "x", "+", "o"]


def _glyph(ch: str) -> np.ndarray:
    cols = _GLYPHS.get(ch, _GLYPHS["?"])
    return np.array([[(c >> r) & 1 for c in cols] for r in range(7)], dtype=bool)  # (7, 5)


def text_bitmap(s: str, scale: int = 2) -> np.ndarray:
    """Boolean bitmap (7 scale, 6 scale len(s)) of ``s`` in the 5x7 font with 1-column spacing."""
    for a, b in (("±", "+-"), ("–", "-"), ("×", "x"), ("≈", "~")):
        s = s.replace(a, b)
    if not s:
        return np.zeros((7 * scale, 0), dtype=bool)
    bm = np.concatenate([np.pad(_glyph(ch), ((0, 0), (0, 1))) for ch in s], axis=1)
    return np.kron(bm, np.ones((scale, scale), dtype=bool)).astype(bool)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def read_png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from a PNG header (for tests)."""
    data = Path(path).read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", data[16:24])


class Canvas:
    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)

    def _blend(self, mask: np.ndarray, y0: int, x0: int, color, alpha: float = 1.0) -> None:
        h, w = mask.shape
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + h, self.h), min(x0 + w, self.w)
        if ya >= yb or xa >= xb:
            return
        m = mask[ya - y0: yb - y0, xa - x0: xb - x0]
        region = self.img[ya:yb, xa:xb].astype(np.float32)
        c = np.asarray(color, dtype=np.float32)
        region[m] = (1 - alpha) * region[m] + alpha * c
        self.img[ya:yb, xa:xb] = region.astype(np.uint8)

    def fill_rect(self, x0: float, y0: float, x1: float, y1: float, color, alpha: float = 1.0) -> None:
        xa, xb = sorted((int(round(x0)), int(round(x1))))
        ya, yb = sorted((int(round(y0)), int(round(y1))))
        self._blend(np.ones((max(yb - ya, 1), max(xb - xa, 1)), bool), ya, xa, color, alpha)

    def rect(self, x0, y0, x1, y1, color, width: int = 1) -> None:
        for a, b, c, d in ((x0, y0, x1, y0), (x1, y0, x1, y1), (x1, y1, x0, y1), (x0, y1, x0, y0)):
            self.line(a, b, c, d, color, width)

    def line(self, x0: float, y0: float, x1: float, y1: float, color, width: float = 2.0, dash: int = 0) -> None:
        n = int(max(abs(x1 - x0), abs(y1 - y0)) * 2) + 2
        t = np.linspace(0.0, 1.0, n)
        if dash:
            length = math.hypot(x1 - x0, y1 - y0)
            t = t[((t * length) // dash) % 2 == 0]
        r = max(width / 2.0, 0.5)
        k = int(math.ceil(r))
        yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
        brush = (xx ** 2 + yy ** 2) <= r * r + 0.25
        mask = np.zeros((self.h + 2 * k + 2, self.w + 2 * k + 2), bool)
        px = np.round(x0 + (x1 - x0) * t).astype(int) + k
        py = np.round(y0 + (y1 - y0) * t).astype(int) + k
        keep = (px >= 0) & (py >= 0) & (px < self.w + k) & (py < self.h + k)
        px, py = px[keep], py[keep]
        for dy, dx in zip(*np.nonzero(brush)):
            yy2, xx2 = py + dy - k, px + dx - k
            ok = (yy2 >= 0) & (xx2 >= 0) & (yy2 < mask.shape[0]) & (xx2 < mask.shape[1])
            mask[yy2[ok], xx2[ok]] = True
        self._blend(mask[k:k + self.h, k:k + self.w], 0, 0, color)

    def polyline(self, xs: Sequence[float], ys: Sequence[float], color, width: float = 2.0) -> None:
        for i in range(len(xs) - 1):
            if all(math.isfinite(v) for v in (xs[i], ys[i], xs[i + 1], ys[i + 1])):
                self.line(xs[i], ys[i], xs[i + 1], ys[i + 1], color, width)

    def polygon_fill(self, xs: Sequence[float], ys: Sequence[float], color, alpha: float = 0.2) -> None:
        """Fill a simple polygon (even-odd rule on pixel centres)."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if len(xs) < 3:
            return
        y0, y1 = int(max(np.floor(ys.min()), 0)), int(min(np.ceil(ys.max()), self.h - 1))
        x0, x1 = int(max(np.floor(xs.min()), 0)), int(min(np.ceil(xs.max()), self.w - 1))
        if y1 < y0 or x1 < x0:
            return
        gy, gx = np.mgrid[y0:y1 + 1, x0:x1 + 1] + 0.5
        inside = np.zeros(gy.shape, bool)
        xj, yj = np.roll(xs, 1), np.roll(ys, 1)
        for xa, ya, xb, yb in zip(xs, ys, xj, yj):
            if ya == yb:
                continue
            cross = ((ya > gy) != (yb > gy)) & (gx < (xb - xa) * (gy - ya) / (yb - ya) + xa)
            inside ^= cross
        self._blend(inside, y0, x0, color, alpha)

    def marker(self, x: float, y: float, kind: str, color, size: int = 5) -> None:
        yy, xx = np.mgrid[-size:size + 1, -size:size + 1]
        if kind == "s":
            m = np.ones_like(yy, bool)
        elif kind == "^":
            m = (yy >= -size) & (np.abs(xx) <= (yy + size) / 2 + 0.5)
        elif kind == "v":
            m = np.abs(xx) <= (size - yy) / 2 + 0.5
        elif kind == "D":
            m = np.abs(xx) + np.abs(yy) <= size
        elif kind in ("x", "+"):
            m = (np.abs(xx + (yy if kind == "x" else 0) * (kind == "x")) <= 1) | (np.abs(yy - (xx if kind == "x" else 0)) <= 1) \
                if kind == "x" else (np.abs(xx) <= 1) | (np.abs(yy) <= 1)
        else:
            m = xx ** 2 + yy ** 2 <= size * size
        self._blend(m, int(round(y)) - size, int(round(x)) - size, color)

    def text(self, x: float, y: float, s: str, color=(0, 0, 0), scale: int = 2, anchor: str = "lt",
             vertical: bool = False) -> tuple[int, int]:
        """Draw ``s`` with its anchor at (x, y): anchor[0] in l/c/r (horizontal), anchor[1] in t/m/b."""
        bm = text_bitmap(s, scale)
        if vertical:
            bm = np.rot90(bm)
        h, w = bm.shape
        dx = {"l": 0, "c": -w // 2, "r": -w}[anchor[0]]
        dy = {"t": 0, "m": -h // 2, "b": -h}[anchor[1]]
        self._blend(bm, int(round(y)) + dy, int(round(x)) + dx, color)
        return w, h

    def save(self, path: str | Path) -> None:
        write_png(path, self.img)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) + 1), hi + 0.5 * (abs(hi) + 1)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 0.5:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.3g}"
    return f"{v:.4g}" if a >= 1 else f"{v:.2f}"


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    spread: Sequence[float] | None = None  # +- band (line) or error bar (bar)
    color: tuple[int, int, int] | None = None
    marker: str | None = None


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    kind: str = "line"  # "line" or "bar"
    categories: Sequence[str] | None = None  # bar: the x groups (else the first series' x)
    markers: bool = True
    ylim: tuple[float, float] | None = None


def _draw_panel(cv: Canvas, p: Panel, x0: int, y0: int, w: int, h: int) -> None:
    left, right, top, bottom = 78, 16, 30, 52
    ax0, ax1, ay0, ay1 = x0 + left, x0 + w - right, y0 + top, y0 + h - bottom
    cv.text(x0 + w / 2, y0 + 6, p.title, scale=2, anchor="ct")
    cv.text(x0 + 8, (ay0 + ay1) / 2, p.ylabel, scale=2, anchor="lm", vertical=True)
    cv.text((ax0 + ax1) / 2, y0 + h - 6, p.xlabel, scale=2, anchor="cb")
    ys, xs = [], []
    for s in p.series:
        y = np.asarray(s.y, float)
        sp = np.asarray(s.spread, float) if s.spread is not None else np.zeros_like(y)
        ys += list((y - sp)[np.isfinite(y)]) + list((y + sp)[np.isfinite(y)])
        xs += [float(v) for v in s.x]
    ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if p.kind == "bar":
        ylo = min(ylo, 0.0)
    if p.ylim:
        ylo, yhi = p.ylim
    ticks = nice_ticks(ylo, yhi)
    ylo, yhi = min(ticks[0], ylo), max(ticks[-1], yhi)

    def Y(v):  # clipped to the axes (a ylim may cut off outliers)
        v = min(max(v, ylo), yhi) if math.isfinite(v) else v
        return ay1 - (v - ylo) / (yhi - ylo) * (ay1 - ay0)

    for t in ticks:
        if ylo - 1e-9 <= t <= yhi + 1e-9:
            cv.line(ax0, Y(t), ax1, Y(t), (225, 225, 225), 1)
            cv.text(ax0 - 6, Y(t), _fmt(t), scale=1 if len(_fmt(t)) > 6 else 2, anchor="rm")
    if p.kind == "bar":
        cats = list(p.categories or [str(v) for v in p.series[0].x])
        g = len(cats)
        nser = max(len(p.series), 1)
        gw = (ax1 - ax0) / g
        bw = gw * 0.8 / nser
        for gi, c in enumerate(cats):
            cv.text(ax0 + gw * (gi + 0.5), ay1 + 6, c, scale=2, anchor="ct")
        for si, s in enumerate(p.series):
            col = s.color or PALETTE[si % len(PALETTE)]
            for gi, v in enumerate(s.y):
                if not math.isfinite(v):
                    continue
                bx = ax0 + gw * gi + gw * 0.1 + bw * si
                cv.fill_rect(bx, Y(max(ylo, 0.0) if ylo <= 0 else ylo), bx + bw - 1, Y(v), col)
                if s.spread is not None and math.isfinite(s.spread[gi]) and s.spread[gi] > 0:
                    cx = bx + bw / 2
                    lo_, hi_ = Y(v - s.spread[gi]), Y(v + s.spread[gi])
                    cv.line(cx, lo_, cx, hi_, (0, 0, 0), 1)
                    cv.line(cx - 3, lo_, cx + 3, lo_, (0, 0, 0), 1)
                    cv.line(cx - 3, hi_, cx + 3, hi_, (0, 0, 0), 1)
    else:
        xlo, xhi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if xhi == xlo:
            xhi = xlo + 1

        def X(v):
            return ax0 + (v - xlo) / (xhi - xlo) * (ax1 - ax0)

        xt = sorted(set(float(v) for v in p.series[0].x)) if p.series and len(p.series[0].x) <= 8 \
            else nice_ticks(xlo, xhi, 5)
        for t in xt:
            if xlo - 1e-9 <= t <= xhi + 1e-9:
                cv.line(X(t), ay1, X(t), ay1 + 5, (0, 0, 0), 1)
                cv.text(X(t), ay1 + 8, _fmt(t), scale=2, anchor="ct")
        for si, s in enumerate(p.series):
            col = s.color or PALETTE[si % len(PALETTE)]
            x, y = np.asarray(s.x, float), np.asarray(s.y, float)
            if s.spread is not None:
                sp = np.asarray(s.spread, float)
                ok = np.isfinite(y) & np.isfinite(sp)
                if ok.sum() >= 2:
                    px = [X(v) for v in x[ok]] + [X(v) for v in x[ok][::-1]]
                    py = [Y(v) for v in (y + sp)[ok]] + [Y(v) for v in (y - sp)[ok][::-1]]
                    cv.polygon_fill(px, py, col, 0.18)
            cv.polyline([X(v) for v in x], [Y(v) for v in y], col, 2.5)
            if p.markers and len(x) <= 12:
                for a, b in zip(x, y):
                    if math.isfinite(b):
                        cv.marker(X(a), Y(b), s.marker or MARKERS[si % len(MARKERS)], col, 5)
    cv.rect(ax0, ay0, ax1, ay1, (0, 0, 0), 1)


def _draw_legend(cv: Canvas, labels: list[str], colors: list, markers: list, y: int, kind: str) -> None:
    widths = [len(s) * 12 + 44 for s in labels]
    x = (cv.w - sum(widths)) / 2
    for lab, col, mk, wd in zip(labels, colors, markers, widths):
        if kind == "bar":
            cv.fill_rect(x, y - 7, x + 24, y + 7, col)
        else:
            cv.line(x, y, x + 28, y, col, 2.5)
            cv.marker(x + 14, y, mk, col, 5)
        cv.text(x + 34, y, lab, scale=2, anchor="lm")
        x += wd


def figure(path: str | Path, panels: list[Panel], title: str = "", panel_w: int = 440, panel_h: int = 340,
           ncols: int | None = None) -> None:
    """Panels side by side (``ncols`` per row), one shared legend on top, saved as PNG."""
    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    head = 34 + (30 if title else 0)
    cv = Canvas(panel_w * ncols, head + panel_h * nrows)
    if title:
        cv.text(cv.w / 2, 8, title, scale=2, anchor="ct")
    first = panels[0]
    labels = [s.label for s in first.series]
    colors = [s.color or PALETTE[i % len(PALETTE)] for i, s in enumerate(first.series)]
    markers = [s.marker or MARKERS[i % len(MARKERS)] for i, s in enumerate(first.series)]
    _draw_legend(cv, labels, colors, markers, head - 18, first.kind)
    for i, p in enumerate(panels):
        r, c = divmod(i, ncols)
        _draw_panel(cv, p, c * panel_w, head + r * panel_h, panel_w, panel_h)
    cv.save(path)
