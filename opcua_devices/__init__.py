"""OPC UA device servers (production-line controllers, defect-detection cameras) and the gateway's
OPC UA ingress client. See README.md in this directory.

* :mod:`opcua_devices.model`: namespace, ObjectTypes, methods, event types, argument conversions
* :mod:`opcua_devices.server`: :class:`DeviceServer` and ``python -m opcua_devices.server``
* :mod:`opcua_devices.ingress`: :class:`OpcuaIngress` (thread-safe, own asyncio loop)
* :mod:`opcua_devices.security`: hashed passwords, user manager, certificate trust
* :mod:`opcua_devices.pki`: lab PKI, ``python -m opcua_devices.pki``
* :mod:`opcua_devices.tasks`: the factory arrival process and trace replay for a device
* :mod:`opcua_devices.executor`: local execution (:class:`CostModelExecutor`, the model-free fallback)
* :mod:`opcua_devices.bench`: secure method-call round trip, ``python -m opcua_devices.bench --json``

Submodules are imported on use (``from opcua_devices.ingress import OpcuaIngress``), so importing
the package does not pull asyncua or the simulator in.
"""
