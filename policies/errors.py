"""Typed errors that end a command with one clear sentence instead of a traceback."""


class UserError(Exception):
    """A problem with what the user asked for. The CLI prints the message and exits with code 2."""

    exit_code = 2


class UnknownNameError(UserError):
    """An unknown scenario, preset, policy or metric name."""


class PresetError(UserError):
    """A preset file that is missing, not YAML, or fails validation."""


class TraceError(UserError):
    """A workload trace file that cannot be read or does not fit the scenario."""
