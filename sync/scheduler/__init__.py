"""The daemon: when each job runs next (``cadence``), running it then (``daemon``), and its metrics."""
