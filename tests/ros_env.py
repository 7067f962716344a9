"""Environment for ROS 2 child processes started by tests: one domain per run, discovery on the host."""

import os

_ROS_OVERRIDES = ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "FASTRTPS_DEFAULT_PROFILES_FILE",
                  "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")


def ros_child_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in _ROS_OVERRIDES:
        env.pop(var, None)
    # Let each child's ROS wheel bootstrapper set LD_LIBRARY_PATH for its own interpreter's venv.
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    return env
