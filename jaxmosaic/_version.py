"""The package version, apart from the package face so that any module can read it."""

__version__ = "0.1.0"
