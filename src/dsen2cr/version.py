"""The package version (one place: the package, the CLI's ``--version`` and the build read it)."""

__version__ = "0.1.0"
