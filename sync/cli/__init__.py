"""The ``audience-sync`` command line: ``main`` and one module per command group."""
