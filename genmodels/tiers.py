"""Size tiers of the generative models: names match the factory preset's ``models:`` catalog."""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("s", "m", "l", "xl")


@dataclass(frozen=True)
class ImageTier:
    """A class-conditional U-Net noise predictor: ``base`` channels at 32x32, ``mults`` per level."""

    name: str
    base: int
    mults: tuple[int, ...]
    blocks: int          # residual blocks per level (down path; the up path has blocks + 1)
    train_steps: int     # optimizer steps of the full build
    batch: int = 32
    lr: float = 2e-3


@dataclass(frozen=True)
class TextTier:
    """A word-piece GRU language model: embedding ``emb``, ``layers`` GRU layers of ``hidden``."""

    name: str
    emb: int
    hidden: int
    layers: int
    train_steps: int
    batch: int = 32
    seq_len: int = 128
    lr: float = 3e-3


IMAGE_TIERS: dict[str, ImageTier] = {
    "defect-s": ImageTier("defect-s", base=16, mults=(1, 2), blocks=1, train_steps=800, batch=16),
    "defect-m": ImageTier("defect-m", base=24, mults=(1, 2, 2), blocks=1, train_steps=600, batch=16),
    "defect-l": ImageTier("defect-l", base=32, mults=(1, 2, 2), blocks=1, train_steps=500, batch=16),
    "defect-xl": ImageTier("defect-xl", base=40, mults=(1, 2, 2), blocks=1, train_steps=400, batch=16),
}

TEXT_TIERS: dict[str, TextTier] = {
    "report-s": TextTier("report-s", emb=32, hidden=96, layers=1, train_steps=300),
    "report-m": TextTier("report-m", emb=64, hidden=160, layers=1, train_steps=300),
    "report-l": TextTier("report-l", emb=96, hidden=256, layers=2, train_steps=250, batch=16, seq_len=96),
    "report-xl": TextTier("report-xl", emb=128, hidden=384, layers=2, train_steps=200, batch=16, seq_len=96),
}

MODEL_VERSION = "1.0.0"
IMAGE_SIZE = 32
DEFECT_CLASSES = ("scratch", "spot", "crack")
