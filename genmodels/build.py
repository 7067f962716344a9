"""``aigc-offload models build``: train the eight models, export them to ONNX, write the catalog.

Writes into ``out``: ``<name>-<version>.onnx`` per model, ``catalog.yaml`` (the cloud model server's
format: name, version, file, size_bytes, sha256, kind), ``provenance.json`` (command, seed, versions,
per model: training steps, final loss, parameters, wall time) and ``samples/`` (a PNG grid per image
model and generated reports, made with the torch-free runtime from the exported files).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import yaml

from genmodels.tiers import IMAGE_TIERS, MODEL_VERSION, TEXT_TIERS

DEFAULT_ZOO = Path(__file__).resolve().parent / "zoo"
FULL = {"images": 6000, "reports": 4000}
QUICK = {"images": 64, "reports": 60, "image_steps": 2, "text_steps": 2}


def build_zoo(out: str | Path = DEFAULT_ZOO, seed: int = 0, quick: bool = False, command: list[str] | None = None,
              log=print, samples: bool = True) -> dict:
    import torch

    from genmodels.train_image import train_image_model
    from genmodels.train_text import train_text_model

    torch.set_num_threads(1)
    log = log or (lambda *_: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    records, entries = [], []
    for tier in TEXT_TIERS.values():
        steps = QUICK["text_steps"] if quick else tier.train_steps
        if quick:
            tier = replace(tier, batch=4, seq_len=32)
        file = f"{tier.name}-{MODEL_VERSION}.onnx"
        log(f"training {tier.name} ({steps} steps)")
        records.append(train_text_model(tier, out / file, seed, steps, QUICK["reports"] if quick else FULL["reports"], log=log))
        entries.append((tier.name, file, "text"))
    for tier in IMAGE_TIERS.values():
        steps = QUICK["image_steps"] if quick else tier.train_steps
        if quick:
            tier = replace(tier, batch=4)
        file = f"{tier.name}-{MODEL_VERSION}.onnx"
        log(f"training {tier.name} ({steps} steps)")
        records.append(train_image_model(tier, out / file, seed, steps, QUICK["images"] if quick else FULL["images"], log=log))
        entries.append((tier.name, file, "image"))
    catalog = []
    for (name, file, kind), rec in zip(entries, records):
        from genmodels.runtime import sha256_file

        p = out / file
        rec.update(file=file, size_bytes=p.stat().st_size, sha256=sha256_file(p))
        catalog.append({"name": name, "version": MODEL_VERSION, "file": file, "size_bytes": rec["size_bytes"],
                        "sha256": rec["sha256"], "kind": kind})
    (out / "catalog.yaml").write_text(
        "# Generative model zoo (genmodels): built by `aigc-offload models build`; see provenance.json.\n"
        + yaml.safe_dump({"models": catalog}, sort_keys=False), encoding="utf-8")
    prov = {"command": " ".join(command or ["aigc-offload", "models", "build", "--out", str(out), "--seed", str(seed)]
                                + (["--quick"] if quick and not command else [])),
            "seed": seed, "quick": quick, "built_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "torch": torch.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
            "torch_threads": 1, "training_data": {"images": QUICK["images"] if quick else FULL["images"],
                                                  "reports": QUICK["reports"] if quick else FULL["reports"]},
            "total_wall_s": round(time.time() - t0, 1), "models": records}
    if samples and not quick:
        prov["samples"] = write_samples(out, seed)
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n", encoding="utf-8")
    return prov


def write_samples(zoo: Path, seed: int = 0) -> list[str]:
    """Samples from the exported files with the torch-free runtime: per image model a PNG grid (rows:
    scratch, spot, crack; columns: 4 seeds at z = 15 and 2 seeds at z = 1 and 4), per text model two
    reports of 128 tokens."""
    from genmodels.png import encode_png, tile
    from genmodels.runtime import load_catalog, open_model

    d = zoo / "samples"
    d.mkdir(exist_ok=True)
    written, text = [], []
    for e in load_catalog(zoo):
        g = open_model(e)
        if e["kind"] == "image":
            ims = [g.generate(c, z, seed + s) for c in range(len(g.classes))
                   for z, s in [(15, 0), (15, 1), (15, 2), (15, 3), (1, 0), (4, 0)]]
            (d / f"{e['name']}.png").write_bytes(encode_png(tile(ims, 6, scale=2)))
            written.append(f"samples/{e['name']}.png")
        else:
            for s in range(2):
                text.append(f"== {e['name']} seed {seed + s}, 128 tokens, temperature 0.8\n{g.generate('', 128, seed + s, 0.8)}\n")
    if text:
        (d / "reports.txt").write_text("\n".join(text), encoding="utf-8")
        written.append("samples/reports.txt")
    return written
