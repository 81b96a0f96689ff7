"""The package version (one home, imported by ``lmxray`` and by provenance records)."""

__version__ = "0.1.0"
