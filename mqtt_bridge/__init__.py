"""MQTT side of aigc_offload: topic scheme (:mod:`.topics`), payload schemas (:mod:`.schemas`),
the ROS-free bridge and device clients over paho-mqtt 2.x (:mod:`.client`), and a mosquitto
configuration generator and managed broker (:mod:`.broker`). See mqtt_bridge/README.md.

Names are imported lazily so ``python -m mqtt_bridge.schemas`` runs cleanly and importing the
package does not require paho-mqtt.
"""

from importlib import import_module

_EXPORTS = {
    "schemas": ("Decision", "DeviceStatus", "ErrorCode", "ErrorReply", "ExecutionReport", "FieldIssue", "Target", "TaskKind",
                "TaskRequest", "TaskResult", "TerminalState"),
    "topics": ("Channel", "DeviceAddress", "TopicError", "format_topic", "parse_topic"),
    "client": ("BridgeClient", "DeviceClient", "IncomingExecution", "IncomingRequest", "MqttSettings", "MqttRefused",
               "RequestRefused"),
    "broker": ("MosquittoBroker", "write_broker_config"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
