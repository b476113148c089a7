"""The command line, the top floor: nothing in the library imports it."""

from ntk_selector.cli.commands import main

__all__ = ["main"]
