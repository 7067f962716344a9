"""Seeded synthetic training data (numpy only): defect images and production reports.

Defect images: ``size`` x ``size`` grayscale brushed-metal surfaces (horizontal streaks, grain,
an illumination gradient) carrying one defect of a class:

- ``scratch`` (0): a thin straight bright groove with a dark shadow line beside it;
- ``spot`` (1): a round dark dent with a bright rim on its lit side;
- ``crack`` (2): a dark jagged line (a random walk of short segments), sometimes with a branch.

Reports: production-line telemetry (line, shift, product, output against target, scrap rate, defect
counts per class, temperatures, vibration, downtime) simulated per report and written out through
templates with some variation of wording and order.
"""

from __future__ import annotations

import numpy as np

from genmodels.tiers import DEFECT_CLASSES, IMAGE_SIZE


# --------------------------------------------------------------------------------------------
# Defect images
# --------------------------------------------------------------------------------------------
def _smooth_rows(a: np.ndarray, width: int) -> np.ndarray:
    """Moving average along the last axis (circular), the brushing direction."""
    k = np.ones(width) / width
    f = np.fft.rfft(a, axis=-1) * np.fft.rfft(np.r_[k, np.zeros(a.shape[-1] - width)])
    return np.fft.irfft(f, n=a.shape[-1], axis=-1)


def _segment_distance(px: np.ndarray, py: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy + 1e-12
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / L2, 0.0, 1.0)
    return np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def metal_texture(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A brushed-metal surface in [0, 1]: base level, horizontal streaks, grain, lighting gradient."""
    base = rng.uniform(0.45, 0.62)
    streaks = _smooth_rows(rng.normal(0, 1, (size, size * 2)), int(rng.integers(8, 20)))[:, :size]
    streaks = streaks / (streaks.std() + 1e-9) * rng.uniform(0.03, 0.06)
    rows = rng.normal(0, 0.02, (size, 1))  # row-to-row brightness (brushing marks)
    grain = rng.normal(0, 0.015, (size, size))
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    ang = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0.04, 0.12) * ((np.cos(ang) * (xx - 0.5)) + np.sin(ang) * (yy - 0.5))
    return base + streaks + rows + grain + light


def _draw_scratch(img: np.ndarray, rng: np.random.Generator) -> None:
    n = img.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    length = rng.uniform(0.4, 0.85) * n
    ang = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.3 * n, 0.7 * n, 2)
    dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
    d = _segment_distance(xx, yy, cx - dx, cy - dy, cx + dx, cy + dy)
    # shadow: the same segment shifted one pixel across the groove
    sx, sy = -np.sin(ang), np.cos(ang)
    ds = _segment_distance(xx, yy, cx - dx + sx, cy - dy + sy, cx + dx + sx, cy + dy + sy)
    depth = rng.uniform(0.25, 0.4)
    img += depth * np.exp(-(d / 0.6) ** 2) - 0.6 * depth * np.exp(-(ds / 0.6) ** 2)


def _draw_spot(img: np.ndarray, rng: np.random.Generator) -> None:
    n = img.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    r = rng.uniform(2.0, 5.0)
    cx, cy = rng.uniform(0.25 * n, 0.75 * n, 2)
    d = np.hypot(xx - cx, yy - cy)
    depth = rng.uniform(0.25, 0.4)
    img -= depth * np.exp(-(d / r) ** 2 * 1.5)
    ang = rng.uniform(0, 2 * np.pi)  # the lit side of the rim
    lit = np.clip(((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) / (d + 1e-9), 0, 1)
    img += 0.6 * depth * lit * np.exp(-((d - r * 1.1) / 0.9) ** 2)


def _draw_crack(img: np.ndarray, rng: np.random.Generator) -> None:
    n = img.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    d = np.full((n, n), np.inf)
    x, y = rng.uniform(0.3 * n, 0.7 * n, 2)
    heading = rng.uniform(0, 2 * np.pi)
    segments = int(rng.integers(6, 11))
    branch_at = int(rng.integers(2, segments)) if rng.random() < 0.5 else -1
    branch = None
    for k in range(segments):
        heading += rng.normal(0, 0.6)
        step = rng.uniform(2.0, 3.5)
        nx, ny = x + step * np.cos(heading), y + step * np.sin(heading)
        if not (1 <= nx <= n - 2 and 1 <= ny <= n - 2):  # turn back at the border
            heading += np.pi
            nx, ny = x + step * np.cos(heading), y + step * np.sin(heading)
        d = np.minimum(d, _segment_distance(xx, yy, x, y, nx, ny))
        if k == branch_at:
            branch = (nx, ny, heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2))
        x, y = nx, ny
    if branch is not None:
        x, y, heading = branch
        for _ in range(int(rng.integers(2, 4))):
            heading += rng.normal(0, 0.5)
            nx, ny = x + 2.5 * np.cos(heading), y + 2.5 * np.sin(heading)
            d = np.minimum(d, _segment_distance(xx, yy, x, y, nx, ny))
            x, y = nx, ny
    img -= rng.uniform(0.3, 0.45) * np.exp(-(d / 0.7) ** 2)


_DRAW = (_draw_scratch, _draw_spot, _draw_crack)


def defect_image(rng: np.random.Generator, defect_class: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """One float64 image in [0, 1] of the given defect class."""
    img = metal_texture(rng, size)
    _DRAW[defect_class](img, rng)
    return np.clip(img, 0.0, 1.0)


def defect_images(n: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (float32, n x size x size, in [0, 1]) and their classes (int64), balanced and
    shuffled; the same seed gives the same arrays."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    labels = rng.permutation(np.arange(n) % len(DEFECT_CLASSES)).astype(np.int64)
    imgs = np.stack([defect_image(rng, int(c), size) for c in labels]).astype(np.float32)
    return imgs, labels


# --------------------------------------------------------------------------------------------
# Production reports
# --------------------------------------------------------------------------------------------
SHIFTS = ("early", "late", "night")
PRODUCTS = ("bracket", "housing", "flange", "gear cover", "shaft", "valve plate")
DOWNTIME_CAUSES = ("tool change", "material shortage", "sensor fault", "cleaning", "conveyor jam",
                   "camera recalibration")
ACTIONS = ("inspect the press tooling", "check the coolant flow", "recalibrate camera",
           "replace the cutting insert", "review the material batch", "schedule maintenance")


def telemetry(rng: np.random.Generator) -> dict:
    """Simulated telemetry of one line over one shift."""
    target = int(rng.choice([800, 900, 1000, 1100, 1200, 1500]))
    availability = float(np.clip(rng.normal(0.94, 0.05), 0.6, 1.0))
    output = int(target * availability * rng.uniform(0.95, 1.03))
    scrap_pct = float(np.clip(rng.gamma(2.0, 0.9), 0.1, 9.9))
    scrapped = max(1, int(round(output * scrap_pct / 100)))
    w = rng.dirichlet([3.0, 2.0, 1.0])
    counts = rng.multinomial(scrapped, w)
    return {"line": int(rng.integers(1, 5)), "shift": str(rng.choice(SHIFTS)),
            "day": int(rng.integers(1, 29)), "month": int(rng.integers(1, 13)),
            "product": str(rng.choice(PRODUCTS)), "variant": f"{'ABCDEFGH'[rng.integers(0, 8)]}{rng.integers(1, 10)}",
            "target": target, "output": output, "scrap_pct": round(scrap_pct, 1),
            "scratches": int(counts[0]), "spots": int(counts[1]), "cracks": int(counts[2]),
            "oven_c": int(rng.normal(210, 6)), "spindle_c": int(rng.normal(42, 4)),
            "vibration": round(float(np.clip(rng.gamma(3.0, 0.6), 0.3, 9.9)), 1),
            "downtime_min": int(rng.integers(0, 60)) if rng.random() < 0.7 else 0,
            "cause": str(rng.choice(DOWNTIME_CAUSES)), "camera": int(rng.integers(1, 15)),
            "action": str(rng.choice(ACTIONS))}


def report_text(t: dict, rng: np.random.Generator) -> str:
    """One report (one line of text) from telemetry ``t``."""
    head = rng.choice([
        "Report line {line}, {shift} shift, day {day}/{month}.",
        "Line {line} {shift} shift report, day {day}/{month}.",
        "Shift report: line {line}, {shift} shift, day {day}/{month}."])
    prod = "Product {product} {variant}."
    pct = 100.0 * t["output"] / t["target"]
    out = rng.choice([
        "Output {output} units of {target} planned ({pct:.1f} %).",
        "Produced {output} units, target {target} ({pct:.1f} %)."])
    scrap = rng.choice([
        "Scrap rate {scrap_pct:.1f} %: {scratches} scratches, {spots} spots, {cracks} cracks.",
        "Scrap {scrap_pct:.1f} % with {scratches} scratches, {spots} spots and {cracks} cracks."])
    temps = rng.choice([
        "Oven at {oven_c} C, spindle at {spindle_c} C, vibration {vibration:.1f} mm/s.",
        "Temperatures: oven {oven_c} C, spindle {spindle_c} C. Vibration {vibration:.1f} mm/s."])
    down = ("Downtime {downtime_min} min ({cause})." if t["downtime_min"] else "No downtime.")
    issues = []
    if t["scrap_pct"] > 3.0:
        issues.append("scrap above the 3.0 % limit")
    if t["vibration"] > 3.5:
        issues.append("vibration above 3.5 mm/s")
    if t["oven_c"] > 218 or t["oven_c"] < 202:
        issues.append("oven out of range")
    if issues:
        status = "Status: warning, " + " and ".join(issues) + "; {action}"
        status += " {camera}." if "camera" in t["action"] else "."
    else:
        status = rng.choice(["Status: within limits.", "Status: normal, no action needed."])
    parts = [head, prod, out, scrap, temps, down, status]
    if rng.random() < 0.5:  # some variation of order
        parts[3], parts[4] = parts[4], parts[3]
    return " ".join(p.format(**t, pct=pct) for p in parts)


def reports(n: int, seed: int) -> list[str]:
    """``n`` reports; the same seed gives the same texts."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    return [report_text(telemetry(rng), rng) for _ in range(n)]
