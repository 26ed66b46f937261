"""Data sets for rayml: synthetic generators (``rayml.datasets.fraud``) and loaders of bundled real data."""
