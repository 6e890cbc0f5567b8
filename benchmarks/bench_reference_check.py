"""The reference-set check: false notes on sets of normal references, catches of a bad reference among them.

Normal sets (a note on any of them is a false note): sets of k = 1, 2, 3, 5 references drawn from the
bundled benchmark's templates of one product, from ELPV's training normals of one cell type, and from the
outside surfaces' templates (``benchmarks/surfaces.py``, when built). Bad sets: a normal set of k
references whose last one is replaced by a bad frame made from it (black, grey, white, uniform and
Gaussian noise, over- and under-exposed, blurred by sigma 5 px at 256 px) or by another product's image;
caught when the check blames it (``reference_check.reference_reasons``), or, with two references failing
only the product test against each other, both (one note names the pair). Each set is checked as
``inspect`` checks it: every reference inspected against the others as they were taken. Run:

    python benchmarks/bench_reference_check.py [--sets 30] [--out reference_check.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from bench_sanity import bad_frames
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.reference_check import reference_reasons

SURFACES = Path.home() / ".cache/adcopilot/benchmarks/surfaces/mmad.json"
KS = (1, 2, 3, 5)


def product_pools(rng: np.random.Generator) -> dict[str, list[Path]]:
    """Per product, the normal images references are drawn from."""
    pools: dict[str, list[Path]] = {}
    for bench in (ensure_bundled(), SURFACES):
        if not Path(bench).exists():
            continue
        root = Path(bench).parent
        for key, entry in json.loads(Path(bench).read_text()).items():
            product = "/".join(key.split("/")[:2])
            pools.setdefault(product, [])
            for t in entry["random_templates"]:
                if root / t not in pools[product]:
                    pools[product].append(root / t)
    parts = split(seed=0)
    for kind in ("mono", "poly"):
        normals = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        pools[f"ELPV training {kind}"] = [normals[i] for i in sorted(rng.permutation(len(normals))[:40])]
    return pools


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sets", type=int, default=12, help="normal sets per product and k")
    ap.add_argument("--bad-sets", type=int, default=3, help="sets per product and k with a bad reference")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cp = Copilot.load(args.model)
    if cp.check_rules is None:
        raise SystemExit(f"{args.model}: this model has no image check")
    size = cp.detector.image_size
    rng = np.random.default_rng(0)
    pools = product_pools(rng)
    cache: dict[str, tuple[np.ndarray, object]] = {}

    def entry(path: Path) -> tuple[np.ndarray, object]:
        if str(path) not in cache:
            arr = to_float_array(load_image(path), size)
            cache[str(path)] = (arr, cp.detector.encode_reference(arr))
        return cache[str(path)]

    def reasons(arrays: list[tuple[np.ndarray, object]]) -> list[str | None]:
        profiles = [cp._profile(a, a) for a, _ in arrays]  # keyed by the array's bytes, as inspect keys arrays
        return reference_reasons(cp.detector, arrays, profiles, cp.check_rules, cp.registration)

    normal: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    bad: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    products = sorted(pools)
    for product in tqdm(products, desc="products"):
        pool = pools[product]
        family = product.split("/")[0] if "/" in product else "ELPV"
        others = [p for p in products if (p.split("/")[0] if "/" in p else "ELPV") != family]
        for k in KS:
            if len(pool) < k:
                continue
            for s in range(args.sets):
                chosen = [entry(pool[i]) for i in rng.choice(len(pool), k, replace=False)]
                got = reasons(chosen)
                normal[f"{family} k={k}"]["noted" if any(got) else "clean"] += 1
                for r in got:
                    if r:
                        normal[f"{family} k={k} reasons"][r] += 1
                if s >= args.bad_sets:
                    continue
                other_pool = pools[others[int(rng.integers(len(others)))]]
                other = entry(other_pool[int(rng.integers(len(other_pool)))])[0]
                last = chosen[-1][0]
                for name, frame in bad_frames(last, other, rng).items():
                    if k == 1 and name != "black":  # one reference: only a frame without contrast is told
                        continue
                    frame = np.ascontiguousarray(frame, dtype=np.float32)
                    got = reasons([*chosen[:-1], (frame, cp.detector.encode_reference(frame))])
                    caught = got[-1] is not None
                    blamed_good = any(r is not None for r in got[:-1]) and not (k == 2 and caught)
                    bad[f"k={k} {name}"]["caught" if caught else "missed"] += 1
                    if blamed_good:
                        bad[f"k={k} {name}"]["a good one blamed"] += 1
                    if caught:
                        bad[f"k={k} {name} reasons"][got[-1]] += 1
    print("\nnormal reference sets (a note is a false note):")
    for group, c in sorted(normal.items()):
        print(f"  {group:32s} {dict(c)}")
    print("\nsets with one bad reference:")
    for group, c in sorted(bad.items()):
        print(f"  {group:32s} {dict(c)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"normal": normal, "bad": bad}, indent=1))


if __name__ == "__main__":
    main()
