"""The inspection line: batch inspection of whole lots, HTML reports, cost-based thresholds and
nearest-reference selection.

Usage::

    from adcopilot import Copilot
    from adcopilot.line.batch import BatchConfig, run_batch
    from adcopilot.line.sources import collect

    cp = Copilot.load()
    summary = run_batch(cp, collect(["lot_42/"]), ["normals/"], "out/", BatchConfig(shots=1))
    summary.files["report"]       # out/report.html
"""
