"""The version of xprune: its one source (pyproject.toml reads it, ``xprune --version`` prints it)."""

__version__ = "0.1.0"
