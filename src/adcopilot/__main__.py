"""Allows `python -m adcopilot` (and `accelerate launch -m adcopilot`)."""

from adcopilot.cli import main

# Guarded: training's data workers are spawned processes, which import the main module again.
if __name__ == "__main__":
    main()
