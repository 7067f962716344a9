"""ROS 2 nodes of aigc_offload. Submodules import rclpy lazily; nothing here imports torch."""
