"""audience-sync: warehouse audiences and computed traits to ChartMogul, the way Engage syncs them.

The data flows through the modules in this order::

    config → sources → snapshot → diff → messages → destinations → store → runner → cli

``snapshot``, ``diff`` and ``messages`` are pure: plain data in, plain data out.
"""

__version__ = "0.1.0"
