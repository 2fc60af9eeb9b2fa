"""The snapshot: raw results normalised (``normalise``, ``json_values``), then every user's fingerprints and the
users worth a close look (``engine``)."""
