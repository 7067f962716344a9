"""Shared by every test directory: pytest puts this folder on ``sys.path`` (its rootdir-relative
"prepend" import mode inserts a conftest's directory), so the tests below ``tests/hil/`` import the
helpers here (``ros_env``, ``test_edge_stack``) as the tests beside them do."""
