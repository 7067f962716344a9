"""The trained policies shipped in ``policies/trained/`` (written by ``aigc-offload policies regenerate``):
which one the factory runs by default. Torch-free: the gateway, the bench and the tests read it."""

from __future__ import annotations

import json
from pathlib import Path

TRAINED_DIR = Path(__file__).resolve().parent / "trained"
INDEX = TRAINED_DIR / "shipped.json"


def shipped_index() -> dict | None:
    """``shipped.json`` (the regeneration's summary), None when nothing is shipped."""
    try:
        return json.loads(INDEX.read_text())
    except (OSError, ValueError):
        return None


def default_policy_name() -> str | None:
    """The default gateway policy's name, e.g. ``factory_distill_s2`` (file ``<name>.onnx``, card ``<name>/``)."""
    index = shipped_index()
    return None if index is None else str(index["default"])


def default_policy_file() -> Path | None:
    """The default gateway policy's ONNX file, None when it is not there."""
    name = default_policy_name()
    if name is None or not (TRAINED_DIR / f"{name}.onnx").is_file():
        return None
    return TRAINED_DIR / f"{name}.onnx"


def default_policy_run() -> Path | None:
    """The slim trained run shipped beside the default policy (a directory with ``config.json`` and
    ``checkpoint.pt``), None when the default ships without one."""
    name = default_policy_name()
    run = TRAINED_DIR / name if name else None
    return run if run is not None and (run / "checkpoint.pt").is_file() else None
