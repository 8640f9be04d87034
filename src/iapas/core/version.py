"""The version of iapas (ground floor, so that every layer can record it)."""

__version__ = "0.1.0"
