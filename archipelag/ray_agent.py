"""A Ray node's dashboard agent as Ray's minimal install runs it: no modules, no gRPC or HTTP server, no reports.

`ray start` passes the agent's command to the raylet as ``python -u -m archipelag.ray_agent AGENT_SCRIPT ARGS``
(`nodes.leave_out_ray_dashboard`, which also adds ``--minimal``). An agent with ``--minimal`` still loads every
module it can import, so here Ray reads its dashboard's dependencies as missing before the script runs.
"""

from __future__ import annotations

import os
import runpy
import sys


def read_dashboard_as_missing() -> None:
    """In this process, Ray reads its dashboard's dependencies as not installed: `ray start` then adds ``--minimal``
    to the agent's command, and the agent loads no modules."""
    from ray._private import utils
    from ray.dashboard import utils as dashboard_utils

    missing = ImportError("Archipelag runs Ray without its dashboard")
    utils.get_dashboard_dependency_error = lambda: missing
    dashboard_utils.get_dashboard_dependency_error = lambda: missing  # type: ignore[attr-defined]  # its own import


def main() -> None:
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(script)  # as if the script had been run itself
    read_dashboard_as_missing()
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
