"""PRECISE on Ray: streaming pre-training of sequential recommenders (library package)."""

__version__ = "0.1.0"
