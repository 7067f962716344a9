"""Trace files: format validation with clear errors (scenario round trips are tested per scenario), and
the MCAP recorder of ROS topics (aigc_offload.recorder) on a failed start."""

import json
from pathlib import Path

import numpy as np
import pytest

from policies.errors import TraceError
from policies.workload import Workload, read_trace, write_trace

TASKS = {"slot": "slot index", "source": "device index", "size_bits": "bit"}
PARAMS = {"cpu_hz": "Hz"}
DTYPES = {"slot": np.int64, "source": np.int64}


def _write(tmp_path, workloads):
    path = tmp_path / "t.jsonl"
    write_trace(path, "demo", "abc", TASKS, PARAMS, workloads)
    return path


def _wl(ep, n):
    return Workload("demo", ep, {"cpu_hz": np.array([1e9, 2e9])},
                    {"slot": np.arange(n, dtype=np.int64), "source": np.zeros(n, dtype=np.int64),
                     "size_bits": np.linspace(1e6, 2e6, n)})


def test_round_trip(tmp_path):
    path = _write(tmp_path, [_wl(0, 5), _wl(1, 0), _wl(2, 3)])
    tr = read_trace(path, "demo", TASKS, PARAMS, DTYPES, "abc")
    assert [w.num_tasks for w in tr.workloads] == [5, 0, 3]
    np.testing.assert_array_equal(tr.workloads[0].tasks["size_bits"], _wl(0, 5).tasks["size_bits"])
    assert tr.workloads[0].tasks["slot"].dtype == np.int64
    np.testing.assert_array_equal(tr.workloads[2].params["cpu_hz"], [1e9, 2e9])


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: ["not json"] + lines[1:], "not an aigc-offload trace|not valid JSON"),
    (lambda lines: lines[:1] + ["{broken"] + lines[1:], "line 2 is not valid JSON"),
    (lambda lines: [lines[0].replace('"demo"', '"other"')] + lines[1:], "made for scenario 'other'"),
    (lambda lines: [lines[0]] + lines[2:], "task comes before any episode"),
    (lambda lines: lines[:2] + [json.dumps({"type": "task", "episode": 0, "slot": 0, "source": 0})] + lines[2:], "lacks field"),
    (lambda lines: lines[:2] + [json.dumps({"type": "task", "episode": 0, "slot": 0, "source": 0, "size_bits": "big"})], "must be numbers"),
    (lambda lines: lines + [json.dumps({"type": "tasks"})], "unknown line type"),
    (lambda lines: lines[:2] + [lines[3], lines[2]], "not sorted by slot"),
    (lambda lines: [], "is empty"),
])
def test_malformed_traces_fail_with_a_sentence(tmp_path, mutate, message):
    path = _write(tmp_path, [_wl(0, 3)])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(mutate(lines)) + "\n")
    with pytest.raises(TraceError, match=message):
        read_trace(path, "demo", TASKS, PARAMS, DTYPES)


def test_missing_file(tmp_path):
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "nope.jsonl", "demo", TASKS, PARAMS)


def test_a_recorder_whose_schema_is_missing_closes_its_file(tmp_path):
    """``McapRecorder`` (the MCAP trace of ROS topics): a SchemaError while registering the topics left
    the file open and unfinished, with nobody holding the recorder to close() it."""
    import os

    pytest.importorskip("mcap")
    pytest.importorskip("aigc_offload.recorder")
    from mcap.reader import make_reader

    from aigc_offload.recorder import McapRecorder, SchemaError

    NoSuchMsg = type("NoSuchMsg", (), {"__module__": "no_such_pkg.msg._no_such_msg"})
    path = tmp_path / "trace.mcap"
    with pytest.raises(SchemaError, match="no definition of no_such_pkg/msg/NoSuchMsg"):
        McapRecorder(object(), path, {"/nowhere": NoSuchMsg})  # fails before it subscribes: no node needed
    fds = Path("/proc/self/fd")
    if fds.is_dir():
        assert not any(os.path.realpath(f) == str(path.resolve()) for f in fds.iterdir() if f.is_symlink())
    with path.open("rb") as f:  # a finished, empty MCAP file
        assert list(make_reader(f).iter_messages()) == []
