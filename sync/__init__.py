"""audience-sync: warehouse audiences and computed traits to ChartMogul or Segment, the way Engage syncs them.

The data flows through the modules in this order::

    config → sources → snapshot (engine, json_values) → planner (diff, guard, messages) → calls
           → destinations → store → delivery → runner (lease, run_report) → scheduler → cli

``snapshot``, ``diff``, ``messages`` and ``calls`` are pure: plain data in, plain data out. ``model`` holds
what flows between them; ``clock`` the time they are given.
"""

__version__ = "0.1.0"
