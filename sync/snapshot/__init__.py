"""The snapshot: raw results normalised (``columns``, ``normalise``, ``json_values``; an account job's columns
renamed at its edge), then every subject's fingerprints and the subjects worth a close look (``engine``)."""
