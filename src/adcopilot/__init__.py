"""adcopilot: a vision-language assistant for industrial anomaly detection.

It compares a query image with normal reference images at the visual-feature level
(the Comparison Encoder of AD-Copilot), finds and boxes defects, and answers questions.

Usage::

    from adcopilot import Copilot
    cp = Copilot.load()
    result = cp.inspect("query.png", ["good.png"])
    print(result.verdict, result.score, result.boxes)
"""

from adcopilot.errors import AdcopilotError

__version__ = "0.1.0"

__all__ = ["AdcopilotError", "Copilot", "__version__"]


def __getattr__(name: str):
    # Lazy import keeps `import adcopilot` cheap (the CLI imports torch only when it needs it).
    if name == "Copilot":
        from adcopilot.api import Copilot

        return Copilot
    raise AttributeError(name)
