"""Resumable, verified model download, without ROS.

The transport is a callable ``fetch_chunk(name, version, offset, max_bytes) -> (data, total_size,
sha256, eof)``: over ROS it wraps the ``FetchModelChunk`` service (see
``cloud_model_server.ros_fetch_chunk``); in tests it can be a plain function. It raises on
failure (a service error, a timeout, a lost connection).

Bytes go to ``<dest>.part``; its size is the received offset, so after an interruption the next
call resumes from there. A sidecar ``<dest>.part.json`` remembers which file (total size, sha256)
the bytes belong to: if the server now serves a different file, the download restarts at 0. At
the end size and sha256 are verified; on a mismatch the ``.part`` is removed and
``FetchVerificationError`` raised; on success the ``.part`` is renamed atomically onto ``dest``.
A local file that cannot be written, read or renamed (disk full, permissions) raises
``FetchStorageError``: every failure of a download is a ``FetchError``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

FetchChunk = Callable[[str, str, int, int], "tuple[bytes, int, str, bool]"]


class FetchError(Exception):
    """Base of download errors; ``str()`` is a sentence."""


class FetchTransportError(FetchError):
    """The transport failed or answered inconsistently; the ``.part`` is kept for a resume."""


class FetchVerificationError(FetchError):
    """The downloaded bytes do not match the announced size or sha256; the ``.part`` is removed."""


class FetchStorageError(FetchError):
    """The destination, its ``.part`` or its sidecar cannot be written, read or renamed (an OSError)."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size_bytes: int
    sha256: str
    chunks: int  # chunks fetched by this call
    resumed_from: int  # bytes already present in the .part when this call started [byte]


def part_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def download_model(fetch_chunk: FetchChunk, name: str, version: str, dest: str | Path, *,
                   chunk_bytes: int = 1 << 20, expected_sha256: str | None = None,
                   max_chunks: int = 1_000_000) -> DownloadResult:
    """Download ``name@version`` to ``dest``, resuming a ``.part`` left by an earlier attempt."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    dest = Path(dest)
    try:
        return _download(fetch_chunk, name, version, dest, chunk_bytes, expected_sha256, max_chunks)
    except OSError as exc:  # the transport's own OSErrors are FetchTransportErrors already: this is the disk
        raise FetchStorageError(f"Model {name}: cannot be stored in {dest.parent} ({exc}).") from exc


def _download(fetch_chunk: FetchChunk, name: str, version: str, dest: Path, chunk_bytes: int,
              expected_sha256: str | None, max_chunks: int) -> DownloadResult:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = part_paths(dest)

    meta: dict = {}
    if part.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
    if part.exists() and not meta:
        _remove(part)  # bytes of unknown origin: start over
    offset = part.stat().st_size if part.exists() else 0
    resumed_from = offset
    total: int | None = meta.get("total_size_bytes")
    sha: str | None = meta.get("sha256")
    chunks = 0

    with open(part, "ab") as f:
        while True:
            if chunks >= max_chunks:
                raise FetchTransportError(f"Model {name}: gave up after {chunks} chunks at offset {offset}.")
            try:
                data, c_total, c_sha, eof = fetch_chunk(name, version, offset, chunk_bytes)
            except FetchError:
                raise
            except Exception as exc:  # noqa: BLE001 - any transport failure keeps the .part
                raise FetchTransportError(
                    f"Model {name}: transport failed at offset {offset} ({exc}); "
                    f"{offset} bytes kept in {part} for a resume.") from exc
            chunks += 1
            data = bytes(data)
            if total is None or sha is None or (c_total, c_sha) != (total, sha):
                if total is not None and offset > 0:
                    # The server now serves a different file than the bytes we hold: restart.
                    f.truncate(0)
                    f.seek(0)
                    offset = 0
                    resumed_from = 0
                    total, sha = c_total, c_sha
                    meta_path.write_text(json.dumps({"total_size_bytes": total, "sha256": sha}))
                    continue
                total, sha = int(c_total), str(c_sha)
                meta_path.write_text(json.dumps({"name": name, "version": version,
                                                 "total_size_bytes": total, "sha256": sha}))
            if len(data) > chunk_bytes or offset + len(data) > total:
                f.close()
                _remove(part, meta_path)
                raise FetchVerificationError(
                    f"Model {name}: chunk at offset {offset} carries {len(data)} bytes, more than "
                    f"asked for or beyond the size {total}; download discarded.")
            if data:
                f.write(data)
                f.flush()
                offset += len(data)
            if eof or offset >= total:
                break
            if not data:
                raise FetchTransportError(
                    f"Model {name}: empty chunk at offset {offset} of {total} without eof; "
                    f"{offset} bytes kept in {part} for a resume.")
        f.flush()
        os.fsync(f.fileno())

    size = part.stat().st_size
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    actual = digest.hexdigest()
    want = (expected_sha256 or sha or "").lower()
    if size != total or actual != want or (expected_sha256 and sha and expected_sha256.lower() != sha.lower()):
        _remove(part, meta_path)
        raise FetchVerificationError(
            f"Model {name}: downloaded {size} bytes with sha256 {actual}, expected {total} bytes "
            f"with sha256 {want}; the download was discarded.")
    os.replace(part, dest)
    _remove(meta_path)
    return DownloadResult(dest, size, actual, chunks, resumed_from)
