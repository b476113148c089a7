"""The demo: its data built from files that ship inside third-party packages (data.py). Above the
library's layers, beside the API: nothing in the library imports it."""
