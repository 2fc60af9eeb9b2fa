"""audience-sync: warehouse audiences and computed traits to ChartMogul or Segment, the way Engage syncs them.

The data flows through the packages in this order::

    config → sources → snapshot (normalise, json_values, engine) → plan (diff, guard, updates, planner)
           → calls → destinations → store → run (runner, lease, delivery, report, alerts)
           → scheduler (cadence, daemon) → audit → cli;  dev (receiver, demo) stands in for a destination

``snapshot``, ``plan`` (but for the planner's reads) and ``calls`` are pure: plain data in, plain data out.
``model`` holds what flows between them; ``clock`` the time they are given.
"""

__version__ = "0.1.0"
