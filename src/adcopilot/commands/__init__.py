"""CLI commands, one module each; :mod:`adcopilot.cli` registers them on the app."""
