"""The cloud model server's catalog of model files, without ROS.

A catalog directory holds the model files and one index, ``catalog.yaml`` (or ``catalog.json``)::

    models:
      - name: defect-diffusion-tiny
        version: 1.2.0
        file: defect-diffusion-tiny-1.2.0.onnx   # relative to the catalog directory
        size_bytes: 3145728
        sha256: 9f86d0...                         # hex digest of the whole file
        kind: image                               # "text" | "image" (or 0 | 1)

``ModelCatalog.load(dir)`` checks every file against its manifest (exists, size, sha256) and
refuses the whole catalog with a sentence naming the model and the mismatch. ``read_chunk`` serves
bytes by offset with bounds checks; every failure is a typed ``CatalogError`` subclass.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

KIND_TEXT = 0  # = aigc_offload_interfaces/ModelManifest.KIND_TEXT
KIND_IMAGE = 1  # = aigc_offload_interfaces/ModelManifest.KIND_IMAGE
_KINDS = {"text": KIND_TEXT, "image": KIND_IMAGE}
INDEX_NAMES = ("catalog.yaml", "catalog.yml", "catalog.json")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class CatalogError(Exception):
    """Base of every catalog error; ``str()`` is a sentence fit for a log line or a reply."""


class CatalogLoadError(CatalogError):
    """The catalog directory or its index is missing or malformed."""


class ManifestMismatchError(CatalogLoadError):
    """A model file does not match its manifest (missing, wrong size or wrong sha256)."""


class UnknownModelError(CatalogError):
    """No model with that name (and version) is in the catalog."""


class ChunkRequestError(CatalogError):
    """A chunk request is invalid (negative offset, zero length, ...)."""


class OffsetOutOfRangeError(ChunkRequestError):
    """The requested offset lies beyond the end of the model file."""


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    size_bytes: int
    sha256: str
    kind: int
    path: Path


def sha256_file(path: Path, block_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            h.update(block)
    return h.hexdigest()


def _version_key(version: str) -> tuple:
    """Sort key: numeric parts compare as numbers ("1.10.0" > "1.9.0")."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+]", version))


def _parse_entry(entry: object, root: Path, index: Path) -> ModelManifest:
    if not isinstance(entry, dict):
        raise CatalogLoadError(f"{index}: every entry under 'models' must be a mapping, got {entry!r}.")
    missing = [k for k in ("name", "version", "file", "size_bytes", "sha256", "kind") if k not in entry]
    if missing:
        raise CatalogLoadError(f"{index}: model entry {entry.get('name', '?')!r} lacks {', '.join(missing)}.")
    name, version = str(entry["name"]), str(entry["version"])
    kind = entry["kind"]
    if isinstance(kind, str):
        if kind.lower() not in _KINDS:
            raise CatalogLoadError(f"{index}: model {name}@{version} has unknown kind {kind!r} (text, image).")
        kind = _KINDS[kind.lower()]
    elif kind not in _KINDS.values():
        raise CatalogLoadError(f"{index}: model {name}@{version} has unknown kind {kind!r} (0=text, 1=image).")
    sha = str(entry["sha256"]).lower()
    if not _SHA256_RE.match(sha):
        raise CatalogLoadError(f"{index}: model {name}@{version} has a malformed sha256 {entry['sha256']!r}.")
    size = entry["size_bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CatalogLoadError(f"{index}: model {name}@{version} has an invalid size_bytes {size!r}.")
    path = (root / str(entry["file"])).resolve()
    if root.resolve() not in path.parents:
        raise CatalogLoadError(f"{index}: model {name}@{version} file {entry['file']!r} lies outside {root}.")
    return ModelManifest(name, version, size, sha, int(kind), path)


def _verify(m: ModelManifest) -> None:
    if not m.path.is_file():
        raise ManifestMismatchError(f"Model {m.name}@{m.version}: file {m.path} does not exist.")
    actual_size = m.path.stat().st_size
    if actual_size != m.size_bytes:
        raise ManifestMismatchError(
            f"Model {m.name}@{m.version}: file {m.path} has {actual_size} bytes, "
            f"the manifest says {m.size_bytes}.")
    actual_sha = sha256_file(m.path)
    if actual_sha != m.sha256:
        raise ManifestMismatchError(
            f"Model {m.name}@{m.version}: file {m.path} has sha256 {actual_sha}, "
            f"the manifest says {m.sha256}; refusing to serve it.")


class ModelCatalog:
    """Verified model manifests, by name and version."""

    def __init__(self, manifests: list[ModelManifest]):
        self._by_key: dict[tuple[str, str], ModelManifest] = {}
        for m in manifests:
            if (m.name, m.version) in self._by_key:
                raise CatalogLoadError(f"Model {m.name}@{m.version} is listed twice in the catalog.")
            self._by_key[(m.name, m.version)] = m

    @classmethod
    def load(cls, catalog_dir: str | Path, verify: bool = True) -> "ModelCatalog":
        root = Path(catalog_dir)
        if not str(catalog_dir) or not root.is_dir():
            raise CatalogLoadError(f"Catalog directory {str(catalog_dir)!r} does not exist.")
        index = next((root / n for n in INDEX_NAMES if (root / n).is_file()), None)
        if index is None:
            raise CatalogLoadError(f"Catalog directory {root} has no index ({', '.join(INDEX_NAMES)}).")
        try:
            text = index.read_text(encoding="utf-8")
            doc = json.loads(text) if index.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise CatalogLoadError(f"Catalog index {index} cannot be read: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
            raise CatalogLoadError(f"Catalog index {index} must be a mapping with a list under 'models'.")
        manifests = [_parse_entry(e, root, index) for e in doc["models"]]
        if verify:
            for m in manifests:
                _verify(m)
        return cls(manifests)

    def manifests(self) -> list[ModelManifest]:
        return sorted(self._by_key.values(), key=lambda m: (m.name, _version_key(m.version)))

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, name: str, version: str = "") -> ModelManifest:
        """The manifest of ``name@version``; ``version=""`` means the latest version."""
        if version:
            m = self._by_key.get((name, version))
            if m is None:
                raise UnknownModelError(f"unknown model {name}@{version}")
            return m
        versions = [m for (n, _), m in self._by_key.items() if n == name]
        if not versions:
            raise UnknownModelError(f"unknown model {name}@latest")
        return max(versions, key=lambda m: _version_key(m.version))

    def read_chunk(self, name: str, version: str, offset: int, max_bytes: int) -> tuple[ModelManifest, bytes]:
        """Bytes ``[offset, offset + max_bytes)`` of the model file (shorter at the end).

        ``offset == size_bytes`` is allowed and returns no data (eof); beyond it is an
        ``OffsetOutOfRangeError``.
        """
        m = self.get(name, version)
        if offset < 0:
            raise ChunkRequestError(f"offset {offset} is negative")
        if max_bytes <= 0:
            raise ChunkRequestError(f"max_bytes {max_bytes} must be positive")
        if offset > m.size_bytes:
            raise OffsetOutOfRangeError(
                f"offset {offset} is beyond the size {m.size_bytes} of model {m.name}@{m.version}")
        with open(m.path, "rb") as f:
            f.seek(offset)
            data = f.read(min(max_bytes, m.size_bytes - offset))
        return m, data


def write_index(catalog_dir: str | Path, entries: list[dict]) -> Path:
    """Write ``catalog.yaml`` for ``entries`` (used by tests and packaging tools)."""
    path = Path(catalog_dir) / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False), encoding="utf-8")
    return path


def manifest_entry(catalog_dir: str | Path, file: str, name: str, version: str, kind: str) -> dict:
    """An index entry for an existing file, with its measured size and sha256."""
    p = Path(catalog_dir) / file
    return {"name": name, "version": version, "file": file, "size_bytes": p.stat().st_size,
            "sha256": sha256_file(p), "kind": kind}
