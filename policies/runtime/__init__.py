"""The torch-free policy runtime the gateways run (DESIGN principle 3): numpy + onnxruntime.

- :class:`OnnxPolicy` (alias :data:`PolicyEngine`): an exported ONNX policy behind the Policy
  interface, its contract checked against the simulator.
- :func:`load_policy`: an ``.onnx`` file or a heuristic by name, interchangeably.
- :class:`DecisionEngine`: embedding without ROS (task + live state -> :class:`Decision`).
- :mod:`policies.runtime.contract`: the metadata contract and :class:`ContractError`.

Contract format, embedding API and the ``decide`` line format: docs/runtime.md.
"""

from policies.runtime.contract import CONTRACT_KEY, CONTRACT_VERSION, ContractError, check_contract, parse_contract
from policies.runtime.engine import Decision, DecisionEngine, decide_lines
from policies.runtime.policy import ObservationError, OnnxPolicy, PolicyEngine, load_policy, read_contract, take_rows

__all__ = ["CONTRACT_KEY", "CONTRACT_VERSION", "ContractError", "Decision", "DecisionEngine", "ObservationError",
           "OnnxPolicy", "PolicyEngine", "check_contract", "decide_lines", "load_policy", "parse_contract",
           "read_contract", "take_rows"]
