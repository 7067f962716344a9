"""Record ROS 2 topics into an MCAP file Foxglove (and ``ros2 bag``) opens, without rosbag2.

Messages are taken serialized (``raw=True`` subscriptions: the CDR bytes as they crossed DDS) and
written with MCAP's ROS 2 profile: message encoding ``cdr``, schema encoding ``ros2msg`` whose
text is the ``.msg`` definition followed by every nested type's definition (each after a line of
80 ``=`` and ``MSG: pkg/Type``), read from the installed interface packages' ``share/`` folders.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
              "uint32", "int64", "uint64", "string", "wstring"}


class SchemaError(LookupError):
    """A message definition cannot be found in any installed share/ directory."""


def _share_dirs() -> list[Path]:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    return [Path(p) / "share" for p in prefixes]


def msg_definition(type_name: str) -> str:
    """The text of ``pkg/msg/Type.msg``."""
    pkg, _, name = type_name.replace("/msg/", "/").partition("/")
    for share in _share_dirs():
        f = share / pkg / "msg" / f"{name}.msg"
        if f.is_file():
            return f.read_text()
    raise SchemaError(f"no definition of {type_name} under {', '.join(str(s) for s in _share_dirs())}")


def ros2msg_schema(type_name: str) -> str:
    """MCAP ``ros2msg`` schema text: the type's definition and its dependencies, depth first."""
    pkg = type_name.split("/")[0]
    main = msg_definition(type_name)
    seen: list[str] = []

    def deps(text: str, own_pkg: str) -> None:
        for raw in text.splitlines():
            tokens = raw.split("#", 1)[0].split()
            if len(tokens) < 2 or "=" in tokens[1]:  # blank, comment, or a constant (always primitive)
                continue
            base = re.sub(r"<=\d+$", "", re.sub(r"\[[^\]]*\]$", "", tokens[0]))
            if base in PRIMITIVES:
                continue
            full = "std_msgs/Header" if base == "Header" else base if "/" in base else f"{own_pkg}/{base}"
            if full not in seen:
                seen.append(full)
                deps(msg_definition(full), full.split("/")[0])

    deps(main, pkg)
    parts = [main.rstrip("\n")]
    for d in seen:
        parts.append("=" * 80 + f"\nMSG: {d}\n" + msg_definition(d).rstrip("\n"))
    return "\n".join(parts) + "\n"


class McapRecorder:
    """Subscribe to topics (serialized) and write them to an MCAP file; thread-safe."""

    def __init__(self, node, path: str | Path, topics: dict[str, type], qos: dict | None = None):
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._writer = Writer(self._file, compression=CompressionType.ZSTD if _has_zstd() else CompressionType.NONE)
        self._lock = threading.Lock()
        self._seq = 0
        self.counts: dict[str, int] = {}
        self._subs = []
        try:
            self._writer.start(profile="ros2", library="aigc_offload recorder")
            for topic, msg_type in topics.items():
                type_name = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"
                schema_id = self._writer.register_schema(name=type_name, encoding="ros2msg",
                                                         data=ros2msg_schema(type_name).encode())
                channel_id = self._writer.register_channel(topic=topic, message_encoding="cdr", schema_id=schema_id)
                self.counts[topic] = 0
                self._subs.append(node.create_subscription(
                    msg_type, topic, lambda data, c=channel_id, t=topic: self._write(c, t, data),
                    (qos or {}).get(topic, 1000), raw=True))
        except BaseException:
            # nobody gets the recorder to close(): leave a finished (empty) file, not an open, truncated one
            for sub in self._subs:
                node.destroy_subscription(sub)
            try:
                self._writer.finish()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            self._file.close()
            self._writer = None
            raise

    def _write(self, channel_id: int, topic: str, data: bytes) -> None:
        now = time.time_ns()
        with self._lock:
            if self._writer is None:
                return
            self._seq += 1
            self._writer.add_message(channel_id=channel_id, log_time=now, data=bytes(data), publish_time=now,
                                     sequence=self._seq)
            self.counts[topic] += 1

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.finish()
                self._file.close()
                self._writer = None


def _has_zstd() -> bool:
    try:
        import zstandard  # noqa: F401

        return True
    except ImportError:
        return False
