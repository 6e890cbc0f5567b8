"""Allows `python -m adcopilot`."""

from adcopilot.cli import main

main()
