#!/bin/bash
# Container health checks (compose.yaml `healthcheck`), run through the entrypoint's environment.
#   healthcheck.sh ros NODE            the lifecycle node /NODE answers get_state with "active"
#   healthcheck.sh tcp PORT            something listens on localhost:PORT (OPC UA device servers)
#   healthcheck.sh file PATH MAX_AGE_S PATH was touched within MAX_AGE_S seconds (MQTT camera)
set -euo pipefail
kind="${1:?usage: healthcheck.sh ros NODE | tcp PORT | file PATH MAX_AGE_S}"
case "$kind" in
  ros)
    # An rclpy service call (no ros2 daemon in the container): GetState on /NODE/get_state.
    exec timeout 25 python - "$2" <<'PY'
import sys
import rclpy
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState

name = sys.argv[1].lstrip("/")
rclpy.init()
node = rclpy.create_node("healthcheck_" + name.replace("/", "_"))
try:
    client = node.create_client(GetState, f"/{name}/get_state")
    if not client.wait_for_service(timeout_sec=15.0):
        print(f"/{name}/get_state not available"); sys.exit(1)
    future = client.call_async(GetState.Request())
    rclpy.spin_until_future_complete(node, future, timeout_sec=5.0)
    state = future.result().current_state if future.done() and future.result() else None
    print(f"/{name}: {state.label if state else 'no answer'}")
    sys.exit(0 if state is not None and state.id == State.PRIMARY_STATE_ACTIVE else 1)
finally:
    node.destroy_node()
    rclpy.try_shutdown()
PY
    ;;
  tcp)
    exec python -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 3).close()' "$2"
    ;;
  file)
    exec python -c 'import os, sys, time; sys.exit(0 if time.time() - os.path.getmtime(sys.argv[1]) < float(sys.argv[2]) else 1)' "$2" "$3"
    ;;
  *)
    echo "healthcheck.sh: unknown check '$kind'" >&2; exit 2 ;;
esac
