"""Plant known bugs in a copy of the package, one at a time, and list the unit tests that catch each.

Each bug is one textual change to a core module, made in a temporary copy of ``src/`` (the checkout
is never touched); the unit tests named beside it run against that copy and every failing test is
reported. A bug that no test catches is a hole in the suite. Prints a Markdown table.

    python benchmarks/planted_bugs.py            # all bugs
    python benchmarks/planted_bugs.py --only box-score-mean
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    what: str
    path: str  # under src/adcopilot
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = (
    Bug("kv-swapped", "keys and values swapped in the cross-attention", "model/compare.py",
        "k, v = self.kv(kv)", "v, k = self.kv(kv)", ("tests/unit/model",)),
    Bug("wrong-norm", "the wrong norm before an encoder block (norm1 before the second cross-attention)",
        "model/compare.py", "c, p = n3(cur), n3(prev)", "c, p = n1(cur), n1(prev)", ("tests/unit/model",)),
    Bug("decoder-residual", "the decoder's residual dropped", "model/compare.py",
        "q = q + self.decoder_cross_attn(", "q = self.decoder_cross_attn(", ("tests/unit/model",)),
    Bug("box-score-mean", "a box's score the mean of the map instead of the maximum", "model/boxes.py",
        "score = float(amap[ys, xs].max())", "score = float(amap[ys, xs].mean())",
        ("tests/unit/test_boxes_geometry.py",)),
    Bug("calibration-tie-first", "calibration ties take the first candidate, not the middle one",
        "line/cost_threshold.py", "i = int(best[len(best) // 2])", "i = int(best[0])",
        ("tests/unit/line/test_calibrate.py",)),
    Bug("focal-alpha-swapped", "focal loss's alpha swapped between defect and normal pixels", "train/losses.py",
        "a_t = alpha * target + (1 - alpha) * (1 - target)", "a_t = (1 - alpha) * target + alpha * (1 - target)",
        ("tests/unit/train",)),
    Bug("registration-rigid", "registration estimates a rigid transform (no scale) instead of a similarity",
        "registration.py", "cv2.MOTION_AFFINE", "cv2.MOTION_EUCLIDEAN", ("tests/unit/test_registration.py",)),
    Bug("registration-unbounded-scale", "registration accepts any scale change", "registration.py",
        "MAX_SCALE = 1.25", "MAX_SCALE = 10.0", ("tests/unit/test_registration.py",)),
)


def plant(src: Path, bug: Bug) -> None:
    """Apply ``bug`` to the copy of the package under ``src``; the original text must occur exactly once."""
    path = src / "adcopilot" / bug.path
    text = path.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"error: {bug.path}: {bug.old!r} occurs {text.count(bug.old)} times (expected once)")
    path.write_text(text.replace(bug.old, bug.new))


def failing_tests(src: Path, tests: tuple[str, ...]) -> tuple[list[str], int]:
    """Run ``tests`` against the package under ``src``: (failing test ids, number of tests run)."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True).stdout
    failed = sorted({m.group(1) for m in re.finditer(r"^FAILED (\S+)", out, re.M)})
    counts = re.findall(r"(\d+) (passed|failed)", out)
    return failed, sum(int(n) for n, _ in counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=[b.name for b in BUGS], help="plant only these bugs")
    args = ap.parse_args()
    print("| planted bug | tests run | failing | caught by |\n|---|---:|---:|---|")
    for bug in BUGS:
        if args.only and bug.name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
            plant(src, bug)
            failed, ran = failing_tests(src, bug.tests)
        names = dict.fromkeys(t.split("::", 1)[1].split("[")[0] for t in failed)  # parameters folded
        caught = ", ".join(f"`{n}`" for n in names) if failed else "**not caught**"
        print(f"| {bug.what} (`{bug.path}`) | {ran} | {len(failed)} | {caught} |", flush=True)


if __name__ == "__main__":
    main()
