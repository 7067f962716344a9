"""``aigc-offload models calibrate``: measure the models' compute per unit on this machine.

For each model of a zoo (``catalog.yaml``, files checked against their sha256) the torch-free
runtime runs on ``threads`` onnxruntime intra-op threads (1 by default): two warm-up calls, then
``repeats`` timed calls (images: 10 denoising steps; text: 64 tokens after the start token). Each
call gives seconds per unit = wall time / units (the numpy work between ONNX calls included, as an
edge server would spend it); the median and the 90th percentile over the calls are reported.
Gcycles per unit = median seconds per unit x host clock in GHz (``/proc/cpuinfo`` "cpu MHz", else
``lscpu``, else ``--clock-ghz``). ``--write`` puts those numbers into the preset's ``models:`` lines
(``gcycles_per_unit``), editing only those lines and one comment line above ``models:``.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import date
from pathlib import Path

import numpy as np

from genmodels.runtime import load_catalog, open_model

IMAGE_STEPS = 10
TEXT_TOKENS = 64
HEADER_MARK = "# gcycles_per_unit: measured by `aigc-offload models calibrate`"


class CalibrationError(Exception):
    pass


def host_clock_ghz() -> tuple[float, str]:
    """(clock in GHz, where it came from)."""
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.lower().startswith("cpu mhz")]
        if mhz:
            return float(np.mean(mhz)) / 1000.0, f"/proc/cpuinfo 'cpu MHz' (mean of {len(mhz)} cores)"
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for key in ("CPU MHz", "CPU max MHz"):
            for line in out.splitlines():
                if line.strip().startswith(key + ":"):
                    return float(line.split(":")[1]) / 1000.0, f"lscpu '{key}'"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    raise CalibrationError("cannot read the host clock from /proc/cpuinfo or lscpu; pass --clock-ghz")


def measure(zoo: str | Path, repeats: int = 15, threads: int = 1, clock_ghz: float | None = None) -> dict:
    """Per model: unit, s per unit (median, p90), Gcycles per unit."""
    if clock_ghz is None:
        clock_ghz, source = host_clock_ghz()
    else:
        source = "--clock-ghz"
    rows = {}
    for e in load_catalog(zoo):
        g = open_model(e, threads=threads)
        image = e["kind"] in ("image", 1)

        def run(k: int) -> float:
            if image:
                g.generate(k % len(g.classes), IMAGE_STEPS, seed=k)
            else:
                g.generate("", TEXT_TOKENS, seed=k)
            return g.last.s_per_unit

        for k in range(2):
            run(k)
        s = np.array([run(100 + k) for k in range(repeats)])
        med = float(np.median(s))
        rows[e["name"]] = {"kind": "image" if image else "text", "unit": "step" if image else "token",
                           "units_per_call": IMAGE_STEPS if image else TEXT_TOKENS,
                           "s_per_unit_median": med, "s_per_unit_p90": float(np.percentile(s, 90)),
                           "gcycles_per_unit": med * clock_ghz, "size_bytes": int(e["size_bytes"]),
                           "parameters": int(g.config.get("parameters", 0))}
    return {"zoo": str(zoo), "clock_ghz": clock_ghz, "clock_source": source, "threads": threads,
            "repeats": repeats, "date": date.today().isoformat(), "models": rows}


def _fmt(v: float) -> str:
    """Three significant digits, positional (YAML 1.1 reads '6e-05' as a string)."""
    return np.format_float_positional(v, precision=3, unique=False, fractional=False, trim="-")


def write_preset(path: Path, res: dict) -> list[str]:
    """Edit the ``gcycles_per_unit`` of each measured model in the preset file in place; returns the
    names written. Only those lines and one comment line above ``models:`` change."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    written = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*-\s*\{\s*name:\s*([^,\s]+)\s*,.*gcycles_per_unit:\s*)([-+0-9.eE]+)(\s*\})(.*?)(\r?\n?)$", line)
        if not m or m.group(2) not in res["models"]:
            continue
        r = res["models"][m.group(2)]
        ms = r["s_per_unit_median"] * 1e3
        comment = f"   # Gcycles per {r['unit']}, measured: {ms:.3g} ms/{r['unit']} (p90 {r['s_per_unit_p90'] * 1e3:.3g})"
        head = m.group(1)
        if res.get("write_sizes"):  # the calibrated preset: model sizes are the real files' (MB = 1e6 byte)
            head = re.sub(r"size_mb:\s*[-+0-9.eE]+", f"size_mb: {_fmt(r['size_bytes'] / 1e6)}", head)
        lines[i] = head + _fmt(r["gcycles_per_unit"]) + m.group(4) + comment + m.group(6)
        written.append(m.group(2))
    header = (f"{HEADER_MARK} on {res['date']}, host clock {res['clock_ghz']:.3f} GHz ({res['clock_source']}),\n"
              f"# onnxruntime {res['threads']} thread(s), median of {res['repeats']} runs of the genmodels zoo"
              + (" (docs/genmodels.md); size_mb = the zoo files' sizes.\n" if res.get("write_sizes") else
                 " (docs/genmodels.md); size_mb stays the papers' (the zoo files are small stand-ins).\n"))
    idx = next((i for i, l in enumerate(lines) if l.startswith("models:")), None)
    if idx is None:
        raise CalibrationError(f"{path} has no top-level 'models:' line")
    if idx >= 2 and lines[idx - 2].startswith(HEADER_MARK):
        lines[idx - 2: idx] = [header]
    else:
        lines.insert(idx, header)
    path.write_text("".join(lines), encoding="utf-8")
    return written


def _preset_path(name: str) -> Path:
    from policies.config import PRESET_DIR

    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PRESET_DIR / f"{name}.yaml"


def run_calibrate(args) -> int:
    from genmodels.build import DEFAULT_ZOO
    from genmodels.runtime import ModelFileError
    from policies.errors import UserError

    zoo = Path(args.zoo or DEFAULT_ZOO)
    try:
        res = measure(zoo, repeats=args.repeats, threads=args.threads, clock_ghz=args.clock_ghz)
    except (ModelFileError, CalibrationError) as exc:
        raise UserError(str(exc)) from exc
    path = _preset_path(args.preset)
    old = {}
    if path.is_file():
        from policies.config import load_preset

        old = {m.name: m.gcycles_per_unit for m in getattr(load_preset(str(path)), "models", [])}
    for name, r in res["models"].items():
        r["preset_gcycles_per_unit"] = old.get(name)
    res["write_sizes"] = bool(getattr(args, "sizes", False))
    if args.write:
        if not path.is_file():
            raise UserError(f"preset file {path} does not exist")
        before = path.read_text(encoding="utf-8")
        written = write_preset(path, res)
        try:
            from policies.config import load_preset

            load_preset(str(path))
        except Exception as exc:  # never leave a broken preset behind
            path.write_text(before, encoding="utf-8")
            raise UserError(f"the calibrated preset {path} did not validate ({exc}); left it unchanged") from exc
        res["written"] = {"preset": str(path), "models": written}
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"host clock {res['clock_ghz']:.3f} GHz from {res['clock_source']}; onnxruntime {res['threads']} thread(s); "
          f"median and p90 of {res['repeats']} runs ({IMAGE_STEPS} steps / {TEXT_TOKENS} tokens each)")
    print(f"{'model':10s} {'unit':5s} {'params':>9s} {'MB':>6s} {'ms/unit':>9s} {'p90':>9s} {'Gcyc/unit':>10s} {'preset was':>10s}")
    for name, r in res["models"].items():
        was = r["preset_gcycles_per_unit"]
        print(f"{name:10s} {r['unit']:5s} {r['parameters']:>9,d} {r['size_bytes'] / 1e6:6.2f} "
              f"{r['s_per_unit_median'] * 1e3:9.4f} {r['s_per_unit_p90'] * 1e3:9.4f} {r['gcycles_per_unit']:10.5f} "
              f"{'-' if was is None else f'{was:g}':>10s}")
    if args.write:
        print(f"wrote gcycles_per_unit of {', '.join(res['written']['models'])} into {res['written']['preset']}")
    return 0
