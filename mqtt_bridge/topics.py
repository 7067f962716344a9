"""Unified-namespace topic scheme of the MQTT side.

Device topics (six levels)::

    <enterprise>/<site>/<line>/<device>/aigc/<channel>
    channel: request, execution (device -> bridge), decision, result, error (bridge -> device),
             status (device presence, retained)

Bridge presence (five levels, cannot collide with a device topic)::

    <enterprise>/aigc/bridge/<bridge>/status

Every level is 1-64 characters of ``[A-Za-z0-9_-]`` starting with a letter or digit: no ``/``,
no wildcards ``+``/``#``, no ``$``, no spaces, so a level is safe in a topic, an ACL line, a file
name and a log line. Device ids are unique within an enterprise (the bridge answers by device id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

LEVEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
AIGC = "aigc"
DEFAULT_ENTERPRISE = "factory"


class TopicError(ValueError):
    """A topic or a topic level that does not follow the scheme."""


class Channel(StrEnum):
    request = "request"
    decision = "decision"
    result = "result"
    error = "error"
    status = "status"
    execution = "execution"  # the device reports the run of its own share of a task


#: channels a device publishes on; the others it only reads.
DEVICE_PUBLISHES = (Channel.request, Channel.status, Channel.execution)
DEVICE_READS = (Channel.decision, Channel.result, Channel.error)


def check_level(value: str, what: str = "topic level") -> str:
    """Return ``value`` if it is a safe topic level, else raise :class:`TopicError`."""
    if not isinstance(value, str) or not LEVEL_RE.match(value):
        raise TopicError(
            f"{what} {value!r} is not 1-64 characters of [A-Za-z0-9_-] starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class DeviceAddress:
    """Where a device sits in the namespace."""

    site: str
    line: str
    device: str
    enterprise: str = DEFAULT_ENTERPRISE

    def __post_init__(self) -> None:
        check_level(self.enterprise, "enterprise")
        check_level(self.site, "site")
        check_level(self.line, "line")
        check_level(self.device, "device id")

    def topic(self, channel: Channel | str) -> str:
        return format_topic(self, channel)

    @property
    def prefix(self) -> str:
        return f"{self.enterprise}/{self.site}/{self.line}/{self.device}/{AIGC}"


def format_topic(address: DeviceAddress, channel: Channel | str) -> str:
    channel = Channel(channel)
    return f"{address.prefix}/{channel.value}"


def parse_topic(topic: str) -> tuple[DeviceAddress, Channel]:
    """Split a device topic into its address and channel; :class:`TopicError` if it is not one."""
    if not isinstance(topic, str):
        raise TopicError(f"topic {topic!r} is not a string")
    parts = topic.split("/")
    if len(parts) != 6 or parts[4] != AIGC:
        raise TopicError(f"topic {topic!r} is not <enterprise>/<site>/<line>/<device>/aigc/<channel>")
    enterprise, site, line, device, _, channel = parts
    try:
        ch = Channel(channel)
    except ValueError:
        raise TopicError(
            f"topic {topic!r} has channel {channel!r}, expected one of {', '.join(c.value for c in Channel)}"
        ) from None
    return DeviceAddress(site=site, line=line, device=device, enterprise=enterprise), ch


def subscription(channel: Channel | str, enterprise: str = DEFAULT_ENTERPRISE, site: str = "+",
                 line: str = "+", device: str = "+") -> str:
    """Topic filter for one channel of many devices, e.g. ``factory/+/+/+/aigc/request``."""
    check_level(enterprise, "enterprise")
    for value, what in ((site, "site"), (line, "line"), (device, "device id")):
        if value != "+":
            check_level(value, what)
    return f"{enterprise}/{site}/{line}/{device}/{AIGC}/{Channel(channel).value}"


def bridge_status_topic(bridge_id: str, enterprise: str = DEFAULT_ENTERPRISE) -> str:
    check_level(enterprise, "enterprise")
    if bridge_id != "+":
        check_level(bridge_id, "bridge id")
    return f"{enterprise}/{AIGC}/bridge/{bridge_id}/status"


def sibling_topic(topic: str, channel: Channel | str) -> str | None:
    """The topic of another channel of the same device, derived from a topic that may not validate
    (so an error reply still reaches the device that used a malformed topic). None if impossible."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[4] != AIGC or any(c in topic for c in "+#\0"):
        return None
    return "/".join(parts[:5] + [Channel(channel).value])
