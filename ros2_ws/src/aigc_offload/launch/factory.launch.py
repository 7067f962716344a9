"""Launch the factory node graph: cloud model server, edge servers, edge gateway.

    ros2 launch aigc_offload factory.launch.py [config:=FILE] [policy:=greedy|FILE.onnx] [num_edge_servers:=N]

The node list and every parameter come from ``aigc_offload.deployment.node_specs`` applied to the
deployment file (default: the package's ``config/factory.yaml``), the same function
``aigc-offload factory`` uses where ``ros2 launch`` is not installed, so the two cannot drift
apart (tests/test_edge_stack.py runs this file against recording stand-ins and compares). The
nodes are lifecycle nodes started with ``autostart: true`` (configure + activate on their own; a
node that cannot configure exits non-zero).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from aigc_offload.deployment import load_deployment, node_specs


def _nodes(context, *args, **kwargs):
    config = LaunchConfiguration("config").perform(context)
    overrides = {}
    policy = LaunchConfiguration("policy").perform(context)
    if policy:
        overrides["gateway.policy"] = policy
    num_edges = LaunchConfiguration("num_edge_servers").perform(context)
    if num_edges:
        overrides["num_edge_servers"] = int(num_edges)
    deployment = load_deployment(config, overrides)
    # The execution tier runs niced (Deployment.execution_nice): on a shared machine the decision path
    # keeps the CPU. ros2 launch keeps its children in its own session, so plain nice is enough.
    return [Node(package="aigc_offload", executable=spec.executable, name=spec.name,
                 parameters=[spec.parameters], output="screen",
                 **({"prefix": f"nice -n {spec.nice}"} if spec.nice else {}))
            for spec in node_specs(deployment)]


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory("aigc_offload"), "config", "factory.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="deployment file (preset, seed, gateway/edge/cloud settings)"),
        DeclareLaunchArgument("policy", default_value="",
                              description="gateway policy: heuristic name or .onnx path ('' = the file's)"),
        DeclareLaunchArgument("num_edge_servers", default_value="",
                              description="edge servers to start ('' = the file's)"),
        OpaqueFunction(function=_nodes),
    ])
