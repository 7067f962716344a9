"""Cloud model server: the catalog, the resumable downloader, and the node over real DDS.

The integration test starts ``python -m aigc_offload.cloud_model_server`` as its own process on a
random ROS_DOMAIN_ID (100-200) with discovery kept on the host, drives configure/activate through
``/cloud_model_server/change_state`` from this process, downloads a ~3 MB model over
FetchModelChunk, interrupts after two chunks, resumes, verifies the sha256, and stops the server
with SIGTERM (it must exit 0).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ros_env import ros_child_env

ROS_OK = (importlib.util.find_spec("rclpy") is not None
          and importlib.util.find_spec("aigc_offload_interfaces") is not None)
needs_ros = pytest.mark.skipif(
    not ROS_OK, reason="rclpy / aigc_offload_interfaces not in this venv: run scripts/build_ros_interfaces.sh")
pytest.importorskip("aigc_offload.model_catalog",
                    reason="pip install -e ros2_ws/src/aigc_offload into the venv")

from aigc_offload.model_catalog import (  # noqa: E402
    KIND_IMAGE, ChunkRequestError, ManifestMismatchError, ModelCatalog, OffsetOutOfRangeError,
    UnknownModelError, manifest_entry, write_index)
from aigc_offload.model_fetch import (  # noqa: E402
    FetchTransportError, FetchVerificationError, download_model, part_paths)

NAME, VERSION = "defect-diffusion-tiny", "1.2.0"


def make_catalog(tmp: Path, size: int, seed: int = 1) -> tuple[Path, bytes]:
    blob = random.Random(seed).randbytes(size)
    cat = tmp / "catalog"
    cat.mkdir()
    (cat / "model.onnx").write_bytes(blob)
    write_index(cat, [manifest_entry(cat, "model.onnx", NAME, VERSION, "image")])
    return cat, blob


def local_transport(catalog: ModelCatalog, fail_after: int | None = None, corrupt_call: int | None = None):
    calls = {"n": 0}

    def fetch_chunk(name, version, offset, max_bytes):
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise ConnectionError("link dropped")
        m, data = catalog.read_chunk(name, version, offset, max_bytes)
        if corrupt_call == calls["n"]:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data, m.size_bytes, m.sha256, offset + len(data) >= m.size_bytes

    fetch_chunk.calls = calls
    return fetch_chunk


# -- catalog ---------------------------------------------------------------------------------
def test_catalog_loads_verifies_and_reads_chunks(tmp_path):
    cat_dir, blob = make_catalog(tmp_path, 10_000)
    cat = ModelCatalog.load(cat_dir)
    m = cat.get(NAME)  # latest
    assert (m.version, m.size_bytes, m.kind) == (VERSION, 10_000, KIND_IMAGE)
    assert m.sha256 == hashlib.sha256(blob).hexdigest()
    assert cat.read_chunk(NAME, VERSION, 9_000, 4096)[1] == blob[9_000:]
    assert cat.read_chunk(NAME, "", 10_000, 16)[1] == b""  # offset == size: empty, eof


def test_catalog_refuses_a_file_with_the_wrong_sha256(tmp_path):
    cat_dir, blob = make_catalog(tmp_path, 4096)
    (cat_dir / "model.onnx").write_bytes(bytes([blob[0] ^ 1]) + blob[1:])  # same size, other bytes
    with pytest.raises(ManifestMismatchError) as exc:
        ModelCatalog.load(cat_dir)
    msg = str(exc.value)
    assert msg.startswith(f"Model {NAME}@{VERSION}: file ") and "sha256" in msg
    assert "manifest says" in msg and msg.endswith(".")


def test_catalog_typed_errors_for_bad_requests(tmp_path):
    cat = ModelCatalog.load(make_catalog(tmp_path, 1000)[0])
    with pytest.raises(OffsetOutOfRangeError, match="offset 1001 is beyond the size 1000"):
        cat.read_chunk(NAME, VERSION, 1001, 10)
    with pytest.raises(ChunkRequestError):
        cat.read_chunk(NAME, VERSION, 0, 0)
    with pytest.raises(UnknownModelError, match="unknown model nope@9"):
        cat.read_chunk("nope", "9", 0, 10)
    from aigc_offload.model_catalog import CatalogLoadError
    with pytest.raises(CatalogLoadError, match="does not exist"):
        ModelCatalog.load(tmp_path / "missing")


# -- downloader ------------------------------------------------------------------------------
def test_download_interrupted_after_two_chunks_then_resumed(tmp_path):
    cat_dir, blob = make_catalog(tmp_path, 100_000)
    cat = ModelCatalog.load(cat_dir)
    dest = tmp_path / "cache" / "model.onnx"
    part, meta = part_paths(dest)

    with pytest.raises(FetchTransportError, match="transport failed at offset 32768"):
        download_model(local_transport(cat, fail_after=2), NAME, VERSION, dest, chunk_bytes=16_384)
    assert part.stat().st_size == 32_768 and not dest.exists()

    t = local_transport(cat)
    res = download_model(t, NAME, VERSION, dest, chunk_bytes=16_384)
    assert res.resumed_from == 32_768
    assert t.calls["n"] == -(-(100_000 - 32_768) // 16_384)  # only the missing chunks
    assert dest.read_bytes() == blob
    assert res.sha256 == hashlib.sha256(blob).hexdigest() == cat.get(NAME).sha256
    assert not part.exists() and not meta.exists()


def test_download_with_a_corrupted_chunk_is_rejected_and_the_part_removed(tmp_path):
    cat_dir, blob = make_catalog(tmp_path, 50_000)
    cat = ModelCatalog.load(cat_dir)
    dest = tmp_path / "cache" / "model.onnx"
    with pytest.raises(FetchVerificationError, match="the download was discarded"):
        download_model(local_transport(cat, corrupt_call=2), NAME, VERSION, dest, chunk_bytes=16_384)
    part, meta = part_paths(dest)
    assert not part.exists() and not meta.exists() and not dest.exists()
    # A retry with a clean link succeeds from scratch.
    res = download_model(local_transport(cat), NAME, VERSION, dest, chunk_bytes=16_384)
    assert res.resumed_from == 0 and dest.read_bytes() == blob


# -- node in-process: refuses to configure on a bad catalog ----------------------------------
@needs_ros
def test_node_refuses_to_configure_on_a_mismatched_catalog(tmp_path):
    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from aigc_offload.cloud_model_server import CloudModelServer

    cat_dir, blob = make_catalog(tmp_path, 2048)
    (cat_dir / "model.onnx").write_bytes(blob[:-1])  # truncated
    ctx = Context()
    rclpy.init(context=ctx, domain_id=random.randint(100, 200))
    try:
        node = CloudModelServer(context=ctx, parameter_overrides=[
            Parameter("catalog_dir", value=str(cat_dir))], start_parameter_services=False)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.catalog is None
        node.set_parameters([Parameter("catalog_dir", value=str(tmp_path / "nowhere"))])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


# -- node in-process over real DDS: deactivation with accepted tasks ---------------------------
@needs_ros
def test_deactivation_fails_the_accepted_tasks_and_forgets_their_acknowledgements(tmp_path):
    """_drop_services used to cancel the result timers of accepted tasks without a result, and after
    reactivation RecentAcks still answered a repeated hand-off "accepted": the task never ran."""
    import queue
    import threading

    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from test_edge_stack import RosHarness, request_msg

    from aigc_offload.cloud_model_server import CloudModelServer
    from aigc_offload.deployment import EXECUTION_RESULT_TOPIC
    from aigc_offload_interfaces.msg import Decision, TaskResult
    from aigc_offload_interfaces.srv import SubmitTask

    cat_dir, _blob = make_catalog(tmp_path, 2048)
    domain = random.randint(100, 200)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = CloudModelServer(context=ctx, parameter_overrides=[Parameter("catalog_dir", value=str(cat_dir))])
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    ros = RosHarness(domain)
    results: queue.Queue = queue.Queue()
    try:
        ros.node.create_subscription(TaskResult, EXECUTION_RESULT_TOPIC, results.put, 100)
        change = ros.node.create_client(ChangeState, "/cloud_model_server/change_state")
        submit = ros.node.create_client(SubmitTask, "/cloud_model_server/submit_task")

        def transition(tid: int) -> None:
            assert ros.call(change, ChangeState.Request(transition=Transition(id=tid)), 20.0).success

        def cloud_publishers() -> int:
            return sum(p.topic_name == EXECUTION_RESULT_TOPIC for p in node.publishers)

        transition(Transition.TRANSITION_CONFIGURE)
        transition(Transition.TRANSITION_ACTIVATE)
        # 400 Mbit over the 20 Mbit/s backhaul: the result is due in 20 s, long after the deactivation
        task = request_msg("plc01", "report-s", deadline_s=60.0, input_bits=400_000_000)
        hand_off = SubmitTask.Request(task=task, decision=Decision(
            task_id=task.task_id, target_kind=Decision.TARGET_CLOUD, target_id="cloud", offload_share=1.0,
            model_name="report-s"))
        assert ros.call(submit, hand_off, 20.0, attempt_s=5.0).accepted
        transition(Transition.TRANSITION_DEACTIVATE)
        r = results.get(timeout=10.0)
        assert (r.task_id, r.state, r.executed_on) == (task.task_id, TaskResult.FAILED, "cloud")
        assert r.reason == "the cloud was deactivated before the task finished"

        transition(Transition.TRANSITION_ACTIVATE)
        assert cloud_publishers() == 1  # one publisher, however often the node is activated
        repeats = node._acks.repeats
        assert ros.call(submit, hand_off, 20.0, attempt_s=5.0).accepted  # the gateway's second attempt
        assert node._acks.repeats == repeats and len(node._task_timers) == 1  # admitted anew: it runs
        transition(Transition.TRANSITION_DEACTIVATE)
        assert results.get(timeout=10.0).state == TaskResult.FAILED
        transition(Transition.TRANSITION_CLEANUP)
        assert cloud_publishers() == 0
    finally:
        ros.close()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


# -- integration over real DDS ---------------------------------------------------------------


@needs_ros
def test_cloud_model_server_over_dds_lifecycle_and_resumed_download(tmp_path, monkeypatch):
    import rclpy
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from aigc_offload.cloud_model_server import FetchChunkError, ros_fetch_chunk
    from aigc_offload_interfaces.srv import FetchModelChunk, ListModels

    t0 = time.monotonic()
    size = 3 * 1024 * 1024 + 12_345
    cat_dir, blob = make_catalog(tmp_path, size, seed=7)
    domain_id = random.randint(100, 200)
    for var in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id))

    server = subprocess.Popen(
        [sys.executable, "-m", "aigc_offload.cloud_model_server", "--ros-args",
         "-p", f"catalog_dir:={cat_dir}", "-p", "max_chunk_bytes:=524288"],
        env=ros_child_env(domain_id), cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    node = None
    log = ""
    try:
        node = rclpy.create_node("test_cloud_client", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)

        def call(client, req, timeout_s=5.0, attempts=3):
            # A service just discovered can drop its first reply while the server has not yet matched
            # this client's reply reader (Fast DDS: "failed to send response"); the queries asked
            # this way are idempotent, so they are asked again.
            for _ in range(attempts):
                fut = client.call_async(req)
                executor.spin_until_future_complete(fut, timeout_sec=timeout_s)
                if fut.done():
                    return fut.result()
                fut.cancel()
            raise AssertionError(f"{client.srv_name}: no reply in {attempts} x {timeout_s} s; server: {server.poll()}")

        def transition(tid: int, goal: int) -> None:
            """change_state is not idempotent: without a reply, the state says whether it happened."""
            try:
                assert call(change, ChangeState.Request(transition=Transition(id=tid)), attempts=1).success, \
                    f"transition {tid} failed"
            except AssertionError:
                if call(get_state, GetState.Request()).current_state.id != goal:
                    raise

        change = node.create_client(ChangeState, "/cloud_model_server/change_state")
        get_state = node.create_client(GetState, "/cloud_model_server/get_state")
        fetch = node.create_client(FetchModelChunk, "/cloud_model_server/fetch_model_chunk")
        list_models = node.create_client(ListModels, "/cloud_model_server/list_models")
        assert change.wait_for_service(timeout_sec=15.0), "lifecycle services not discovered"
        assert get_state.wait_for_service(timeout_sec=5.0)
        assert call(get_state, GetState.Request()).current_state.id == State.PRIMARY_STATE_UNCONFIGURED
        assert not fetch.service_is_ready()  # no data services before activate

        transition(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE)
        transition(Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE)
        assert call(get_state, GetState.Request()).current_state.id == State.PRIMARY_STATE_ACTIVE
        assert fetch.wait_for_service(timeout_sec=10.0) and list_models.wait_for_service(timeout_sec=10.0)

        manifests = call(list_models, ListModels.Request()).manifests
        assert [(m.name, m.version, m.size_bytes, m.sha256, m.kind) for m in manifests] == [
            (NAME, VERSION, size, hashlib.sha256(blob).hexdigest(), KIND_IMAGE)]

        bad = call(fetch, FetchModelChunk.Request(name=NAME, version=VERSION, offset=size + 1, max_bytes=10))
        assert not bad.ok and "OffsetOutOfRangeError" in bad.error and len(bad.data) == 0

        transport = ros_fetch_chunk(node, fetch, timeout_s=5.0, executor=executor)
        n = {"calls": 0}

        def interrupted(*args):
            n["calls"] += 1
            if n["calls"] > 2:
                raise ConnectionError("simulated link loss")
            return transport(*args)

        dest = tmp_path / "cache" / "model.onnx"
        with pytest.raises(FetchTransportError):
            # Asks for 1 MiB, the server caps replies at 512 KiB.
            download_model(interrupted, NAME, "", dest, chunk_bytes=1 << 20)
        assert part_paths(dest)[0].stat().st_size == 2 * 524_288

        res = download_model(transport, NAME, "", dest, chunk_bytes=1 << 20)
        assert res.resumed_from == 2 * 524_288
        assert res.sha256 == hashlib.sha256(blob).hexdigest()
        assert dest.read_bytes() == blob

        with pytest.raises(FetchChunkError, match="unknown model"):
            transport("no-such-model", "", 0, 16)
    finally:
        if node is not None:
            executor.shutdown()
            node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            log, _ = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            log, _ = server.communicate(timeout=5)
    assert server.returncode == 0, f"server exit {server.returncode}\n{log[-3000:]}"
    assert "loaded and verified" in log and "Shutting down." in log, log[-3000:]
    assert time.monotonic() - t0 < 30
