"""Torch-free runtime of the generative models: numpy + onnxruntime only.

- ``ImageGenerator(path).generate(defect_class, steps, seed)`` -> uint8 image (H x W): DDIM sampling
  with ``steps`` denoising steps (one ONNX call each) from seeded Gaussian noise.
- ``TextGenerator(path).generate(prompt, max_tokens, seed, temperature)`` -> str: ``max_tokens``
  tokens sampled one ONNX call each, the recurrent state passed explicitly.
- ``verify_model_file(path, sha256, size_bytes)`` checks a file against its manifest before loading;
  both generators take ``sha256=`` (and ``size_bytes=``) and refuse a mismatching file.

Every ``generate`` records the work done and its wall time in ``last`` (a ``GenerationStats``).
Sessions use one intra-op thread by default (``threads=``), as an edge server's worker would.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from genmodels.png import encode_png
from genmodels.schedule import cosine_alpha_bar, ddim_step, ddim_timesteps
from genmodels.tokens import START, Vocab


class ModelFileError(Exception):
    """A model file is missing, does not match its manifest, or is not a genmodels ONNX model."""


@dataclass(frozen=True)
class GenerationStats:
    """Work of one ``generate`` call: ``units`` denoising steps (image) or tokens (text)."""

    units: int
    unit: str          # "step" | "token"
    wall_s: float

    @property
    def s_per_unit(self) -> float:
        return self.wall_s / max(self.units, 1)


def sha256_file(path: str | Path, block_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            h.update(block)
    return h.hexdigest()


def verify_model_file(path: str | Path, sha256: str | None = None, size_bytes: int | None = None) -> Path:
    """``path`` if it exists and matches ``size_bytes`` and ``sha256`` (when given), else ModelFileError."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file {p} does not exist")
    if size_bytes is not None and p.stat().st_size != int(size_bytes):
        raise ModelFileError(f"model file {p} has {p.stat().st_size} bytes, the manifest says {size_bytes}; refusing to load it")
    if sha256 is not None:
        actual = sha256_file(p)
        if actual != str(sha256).lower():
            raise ModelFileError(f"model file {p} has sha256 {actual}, the manifest says {sha256}; refusing to load it")
    return p


def load_catalog(zoo_dir: str | Path) -> list[dict]:
    """The entries of ``zoo_dir/catalog.yaml`` (the cloud model server's format), paths resolved."""
    import yaml

    root = Path(zoo_dir)
    index = root / "catalog.yaml"
    if not index.is_file():
        raise ModelFileError(f"{root} has no catalog.yaml (build one with `aigc-offload models build --out {root}`)")
    try:
        doc = yaml.safe_load(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{index} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        raise ModelFileError(f"{index} is not valid YAML" + (f" (line {where.line + 1})" if where else "")
                             + f": {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ModelFileError(f"{index} must be a mapping with a list under 'models'")
    for i, e in enumerate(doc["models"]):
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not e["file"]:
            raise ModelFileError(f"{index}: model entry {i + 1} must be a mapping with a 'file' (a path "
                                 f"relative to {root})")
    return [{**e, "path": root / e["file"]} for e in doc["models"]]


def open_model(entry: dict, threads: int = 1) -> "ImageGenerator | TextGenerator":
    """The generator of one catalog entry, its file checked against size and sha256."""
    missing = [k for k in ("kind", "sha256", "size_bytes") if k not in entry]
    if missing:
        raise ModelFileError(f"catalog entry {entry.get('name', entry.get('file', '?'))!r} lacks "
                             f"{', '.join(repr(k) for k in missing)}")
    cls = TextGenerator if entry["kind"] in ("text", 0) else ImageGenerator
    return cls(entry["path"], sha256=entry["sha256"], size_bytes=entry["size_bytes"], threads=threads)


class _OnnxModel:
    kind = ""
    config_keys: tuple[str, ...] = ()  # the 'genmodels.config' entries the subclass reads

    def __init__(self, path: str | Path, sha256: str | None = None, size_bytes: int | None = None,
                 threads: int = 1):
        self.path = verify_model_file(path, sha256, size_bytes)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise ModelFileError(f"model file {self.path} is not a loadable ONNX model: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("genmodels.kind") != self.kind:
            raise ModelFileError(f"model file {self.path} is not a genmodels {self.kind} model "
                                 f"(metadata kind {meta.get('genmodels.kind')!r})")
        self.name = meta.get("genmodels.name", self.path.stem)
        try:
            self.config = json.loads(meta["genmodels.config"])
        except KeyError:
            raise ModelFileError(f"model file {self.path} has no 'genmodels.config' metadata") from None
        except ValueError:
            raise ModelFileError(f"model file {self.path} has 'genmodels.config' metadata that is not JSON") from None
        missing = [k for k in self.config_keys if not isinstance(self.config, dict) or k not in self.config]
        if missing:
            raise ModelFileError(f"model file {self.path}: its 'genmodels.config' metadata lacks "
                                 f"{', '.join(repr(k) for k in missing)}")
        self.last: GenerationStats | None = None


class ImageGenerator(_OnnxModel):
    """Class-conditional defect-image diffusion model (DDIM sampling, eta = 0)."""

    kind = "image"
    config_keys = ("classes", "image_size", "num_train_timesteps")

    def __init__(self, path, sha256=None, size_bytes=None, threads: int = 1):
        super().__init__(path, sha256, size_bytes, threads)
        self.classes: list[str] = list(self.config["classes"])
        self.size = int(self.config["image_size"])
        self.T = int(self.config["num_train_timesteps"])
        self.abar = cosine_alpha_bar(self.T)

    def class_index(self, defect_class: int | str) -> int:
        if isinstance(defect_class, str):
            if defect_class not in self.classes:
                raise ValueError(f"unknown defect class {defect_class!r}; {self.name} knows {', '.join(self.classes)}")
            return self.classes.index(defect_class)
        c = int(defect_class)
        if not 0 <= c < len(self.classes):
            raise ValueError(f"defect class {c} out of range 0..{len(self.classes) - 1}")
        return c

    def generate(self, defect_class: int | str = 0, steps: int = 10, seed: int = 0) -> np.ndarray:
        """A ``size`` x ``size`` uint8 image of ``defect_class`` after ``steps`` denoising steps."""
        c = self.class_index(defect_class)
        ts = ddim_timesteps(int(steps), self.T)
        t0 = time.perf_counter()
        x = np.random.default_rng(seed).standard_normal((1, 1, self.size, self.size))
        label = np.array([c], dtype=np.int64)
        for k, t in enumerate(ts):
            v = self.session.run(None, {"x": x.astype(np.float32), "t": np.array([t], np.float32),
                                        "label": label})[0].astype(np.float64)
            prev = self.abar[ts[k + 1]] if k + 1 < len(ts) else 1.0
            x = ddim_step(x, v, self.abar[t], prev)
        img = np.clip((x[0, 0] + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
        self.last = GenerationStats(len(ts), "step", time.perf_counter() - t0)
        return img

    @staticmethod
    def png(image: np.ndarray) -> bytes:
        return encode_png(image)


class TextGenerator(_OnnxModel):
    """Word-piece GRU report generator; the recurrent state is an explicit input/output."""

    kind = "text"
    config_keys = ("vocab", "layers", "hidden")

    def __init__(self, path, sha256=None, size_bytes=None, threads: int = 1):
        super().__init__(path, sha256, size_bytes, threads)
        self.vocab = Vocab(self.config["vocab"])
        self.state_shape = (int(self.config["layers"]), 1, int(self.config["hidden"]))

    def _step(self, token: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, h = self.session.run(None, {"token": np.array([token], np.int64), "state": h})
        return logits[0].astype(np.float64), h

    def generate(self, prompt: str = "", max_tokens: int = 128, seed: int = 0, temperature: float = 0.8) -> str:
        """``prompt`` followed by ``max_tokens`` generated tokens (temperature 0: greedy)."""
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        ids = self.vocab.encode(prompt)
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        h = np.zeros(self.state_shape, np.float32)
        logits, h = self._step(self.vocab.index[START], h)
        for i in ids:
            logits, h = self._step(i, h)
        out: list[int] = []
        for _ in range(int(max_tokens)):
            if temperature <= 0:
                nxt = int(np.argmax(logits))
            else:
                z = logits / temperature
                p = np.exp(z - z.max())
                nxt = int(rng.choice(p.size, p=p / p.sum()))
            out.append(nxt)
            logits, h = self._step(nxt, h)
        self.last = GenerationStats(len(out), "token", time.perf_counter() - t0)
        return prompt + self.vocab.decode(out)
