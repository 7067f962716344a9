"""What every lifecycle node of the package shares: autostart, transition errors and ``main()``.

``autostart: true`` configures and activates a node without a lifecycle manager; a node that was
started to serve but cannot configure or activate says so and shuts its context down, and
:func:`run_node` then exits 1, so launchers and the runner see the failure. An exception in a
transition callback is logged with one line naming the transition and the error, and the
transition fails (ERROR): rclpy 9.1.2 turns it into ERROR without a word (its source leaves the log to do),
so a node that could not activate looked merely idle. :func:`run_node` spins the node until
SIGINT/SIGTERM (rclpy turns both into a context shutdown), runs the node's ``release()`` (stop
threads, close sockets) and destroys it.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Callable

import rclpy
from lifecycle_msgs.msg import State
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import TransitionCallbackReturn

# the transition states rclpy runs a callback in -> what the node was doing
_TRANSITIONS = {State.TRANSITION_STATE_CONFIGURING: "configure", State.TRANSITION_STATE_ACTIVATING: "activate",
                State.TRANSITION_STATE_DEACTIVATING: "deactivate", State.TRANSITION_STATE_CLEANINGUP: "clean up",
                State.TRANSITION_STATE_SHUTTINGDOWN: "shut down",
                State.TRANSITION_STATE_ERRORPROCESSING: "process an error"}


class Autostart:
    """Mixin for LifecycleNode subclasses; call ``self.setup_autostart()`` at the end of __init__."""

    autostart_failed = False

    def setup_autostart(self, callback_group=None) -> None:
        self.autostart_failed = False
        self._log_transition_errors()
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart, callback_group=callback_group)

    def _log_transition_errors(self) -> None:
        """Wrap the callbacks rclpy registered for the transitions (``LifecycleNodeMixin._callbacks``,
        bound in its __init__) so that an exception is logged before it becomes ERROR."""
        def logged(cb, what: str):
            def run(state):
                try:
                    return cb(state)
                except Exception as exc:  # noqa: BLE001 - rclpy would swallow it; the transition fails
                    self.get_logger().error(f"Could not {what}: {type(exc).__name__}: {exc}")
                    return TransitionCallbackReturn.ERROR
            return run

        for state_id, cb in list(self._callbacks.items()):
            self._callbacks[state_id] = logged(cb, _TRANSITIONS.get(state_id, f"leave transition state {state_id}"))

    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        # the node says why it refused (its own "Refusing to ..." or the line above); this says what follows
        for step, trigger in (("configure", self.trigger_configure), ("activate", self.trigger_activate)):
            ret = trigger()
            if ret != TransitionCallbackReturn.SUCCESS:  # a node started to serve that cannot serve exits
                self.get_logger().error(f"Autostart: the node could not {step}; exiting with status 1.")
                self.autostart_failed = True
                self.context.try_shutdown()
                return

    def release(self) -> None:
        """Stop what the node runs besides the executor (threads, sockets); called before destroy."""


def settle_heap() -> None:
    """Move everything alive now (modules, the policy, the simulator, the node) out of the garbage
    collector's reach. Why: a full collection walks every tracked object, and a node that has
    loaded rclpy, numpy, onnxruntime and a simulator holds hundreds of thousands of them; each full
    collection then paused the per-task path for tens of milliseconds (the p99 of the end-to-end
    benchmark). Objects made later are collected as usual. The per-task nodes call it at the end of
    ``on_activate``, when their policy, simulator and threads exist."""
    if os.environ.get("AIGC_GC_FREEZE", "1") == "0":  # for A/B measurements of this very setting
        return
    gc.collect()
    gc.freeze()


def spin_until_shutdown(executor, context) -> None:
    """``executor.spin()`` until the context shuts down. A signal shuts the context down
    asynchronously; when that lands while the executor builds its next wait set rclpy raises
    RCLError ("the given context is not valid") instead of ExternalShutdownException (ros2/ros2cli#854,
    ros-visualization/rqt#357). That case is a shutdown too; an RCLError with the context alive is not."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except RuntimeError:  # RCLError derives from it
        if context.ok():
            raise


def run_node(make_node: Callable[[], object], make_executor: Callable[[], object],
             args: list[str] | None = None) -> int:
    rclpy.init(args=args)  # rclpy's handlers turn SIGINT and SIGTERM into a context shutdown
    node = None
    name = "node"
    try:
        node = make_node()
        name = node.get_name()  # kept: after a context shutdown the node's handle may be gone
        executor = make_executor()
        executor.add_node(node)
        spin_until_shutdown(executor, node.context)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            # After a signal the context (and rosout) is gone: the last line goes to stderr.
            print(f"[INFO] [{name}]: Shutting down.", file=sys.stderr, flush=True)
            try:
                node.release()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway; say what failed
                print(f"[WARN] [{name}]: release failed: {exc}", file=sys.stderr, flush=True)
            try:
                node.destroy_node()
            except Exception as exc:  # noqa: BLE001 - the context's shutdown may have destroyed it already
                print(f"[WARN] [{name}]: destroy failed: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
    return 1 if node is not None and node.autostart_failed else 0
