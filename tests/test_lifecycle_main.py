"""``lifecycle_main.spin_until_shutdown``: a signal that shuts the context down while the executor
builds its next wait set makes rclpy raise RCLError (CI: an edge server exited 1 on SIGTERM); that is a
shutdown, while an RCLError with the context still alive is a real error and propagates."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rclpy") is None, reason="rclpy not installed")


class _RacingExecutor:
    """Stands in for the executor at the racy moment: the context goes down (as the signal handler
    does), then building the wait set fails."""

    def __init__(self, context, shut_down_first: bool):
        self.context, self.shut_down_first = context, shut_down_first

    def spin(self) -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        if self.shut_down_first:
            self.context.try_shutdown()
        raise _rclpy.RCLError("failed to initialize wait set: the given context is not valid")


def _context():
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    return ctx


def test_rclerror_after_the_context_shut_down_is_a_clean_shutdown():
    from aigc_offload.lifecycle_main import spin_until_shutdown

    ctx = _context()
    spin_until_shutdown(_RacingExecutor(ctx, shut_down_first=True), ctx)  # returns, no exception
    assert not ctx.ok()


def test_rclerror_with_the_context_alive_propagates():
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    from aigc_offload.lifecycle_main import spin_until_shutdown

    ctx = _context()
    try:
        with pytest.raises(_rclpy.RCLError):
            spin_until_shutdown(_RacingExecutor(ctx, shut_down_first=False), ctx)
    finally:
        ctx.try_shutdown()


def test_a_real_executor_returns_once_its_context_is_shut_down():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from aigc_offload.lifecycle_main import spin_until_shutdown

    ctx = _context()
    node = rclpy.create_node("spin_until_shutdown_probe", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    node.create_timer(0.01, ctx.try_shutdown)  # the signal handler's part, from a callback
    spin_until_shutdown(ex, ctx)
    assert not ctx.ok()
    node.destroy_node()
