from glob import glob

from setuptools import find_packages, setup

package_name = "aigc_offload"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml", "README.md"]),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
    ],
    install_requires=["setuptools", "pyyaml"],
    zip_safe=True,
    maintainer="aigc_offload developers",
    maintainer_email="dev@aigc-offload.invalid",
    description="ROS 2 nodes of aigc_offload (edge gateway, edge servers, cloud model server).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "cloud_model_server = aigc_offload.cloud_model_server:main",
            "edge_server = aigc_offload.edge_server:main",
            "edge_gateway = aigc_offload.edge_gateway:main",
            "opcua_ingress_node = aigc_offload.opcua_ingress_node:main",
            "mqtt_bridge_node = aigc_offload.mqtt_bridge_node:main",
        ],
    },
)
