"""Training: the stage definitions, a resumable Accelerate loop, and the per-stage tasks.

Inference code never imports this package.
"""
