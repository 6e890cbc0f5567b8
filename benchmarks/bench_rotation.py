"""Registration: ECC on Hann-windowed images (the default) against ECC on the images as they are.

OpenCV 5.0's ``phaseCorrelate`` multiplies its inputs by its window in place, and ``register`` ran ECC on
them after it: windowed images, unseen. ``registration.ECC_WINDOWED`` now does it on purpose (on copies);
``--identical`` checks that it gives bit for bit what the in-place call gave. Two registrations of the
same pairs, the default model inspecting 1-shot:

* ``windowed``: ECC and the guards' correlations, the unaligned images' included, on the windowed grey images
  (the default);
* ``plain guard``: the same, but the guard's unaligned correlation measured on the images as they are (the
  default until 2026-12-07; ``GUARD_LIKE_FOR_LIKE = False``);
* ``as they are``: no window anywhere (``ECC_WINDOWED = False``).

Sets: ``loose`` procedural objects (screw, nut, bottle, pill, capsule, cable, gear, transistor, hazelnut; an
instance rendered twice on the same plain, evenly lit background, the query at a uniform random angle and
shifted up to 5 %: no rigid registration of the whole frame turns such a part back without turning its tray),
``placed`` the same objects turned by at most 3 degrees, ``photos`` the held-out photo crops of
``bench_registration.py`` (shift <= 4 %, rotation <= 3 degrees), ``elpv`` ELPV test cells (probability 0 and
1, ``--per-type`` of each type) against a training normal of their type. Half of the procedural queries get
a synthetic defect on the object. Image AUROC, the model's false alarms on normal queries at its threshold,
and the median time of ``register`` itself.

    python benchmarks/bench_rotation.py --n 60 --per-type 60 [--variants windowed "plain guard"]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cv2
import numpy as np
from bench_registration import make_pairs
from sklearn.metrics import roc_auc_score

from adcopilot import Copilot, registration
from adcopilot.data import procedural
from adcopilot.data.elpv import split
from adcopilot.data.synth import add_defect
from adcopilot.imaging import load_image

Pair = tuple[np.ndarray, np.ndarray, int]
OBJECTS = tuple(procedural.OBJECTS)  # screw, nut, bottle, pill, capsule, cable, gear, transistor, hazelnut


def object_pairs(n: int, max_angle: float, seed: int) -> list[Pair]:
    """(reference, query, label): one instance rendered twice on one background, the query turned."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        category = OBJECTS[i % len(OBJECTS)]
        params, grey = procedural._instance(category, rng)
        params.update(bg_grad=np.zeros(2, np.float32), bg_tex=0.0)  # a plain, evenly lit tray: it does not turn
        draw = procedural.OBJECTS[category][1]
        background_seed = int(rng.integers(2**31))
        views = []
        for angle in (0.0, float(rng.uniform(-max_angle, max_angle))):
            pose = (float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05)), np.deg2rad(angle))
            img, mask = draw(params, 256, pose, np.random.default_rng(background_seed))
            views.append((procedural._to_u8(img, grey), mask))
        (ref, _), (query, mask) = views
        label = i % 2
        if label:
            query = add_defect(query, rng, region=mask).image
        pairs.append((ref, query, label))
    return pairs


def elpv_pairs(per_type: int, seed: int) -> list[Pair]:
    rng = np.random.default_rng(seed)
    parts = split(seed=0)
    pairs = []
    for kind in ("mono", "poly"):
        normals = [c for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        for label, prob in ((0, 0.0), (1, 1.0)):
            cells = [c for c in parts["test"] if c.kind == kind and c.probability == prob]
            for c in rng.choice(len(cells), per_type, replace=False):
                ref = normals[int(rng.integers(len(normals)))]
                pairs.append((np.asarray(load_image(ref.path)), np.asarray(load_image(cells[c].path)), label))
    return pairs


def old_phase_shift(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """Phase correlation as called before: OpenCV windows ``a`` and ``b`` in place."""
    try:
        (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
    except cv2.error:
        return 0.0, 0.0
    return float(dx), float(dy)


def variant(name: str) -> Callable[[], None]:
    def apply() -> None:
        registration.ECC_WINDOWED = name != "as they are"
        registration.GUARD_LIKE_FOR_LIKE = name == "windowed"

    return apply


def identical(pairs: list[Pair]) -> None:
    """The windowed registration against the code before it: OpenCV's in-place windowing, no window of ours. Both
    with the guard of that time (the unaligned images' correlation as they are); the methods and matrices compared
    (the reported correlation after the fit is measured on the images as they are since 2026-12-07)."""
    arrs = [tuple(cv2.resize(x, (256, 256)).astype(np.float32) / 255.0 for x in (ref, query)) for ref, query, _ in pairs]
    guard, registration.GUARD_LIKE_FOR_LIKE = registration.GUARD_LIKE_FOR_LIKE, False
    now = [registration.register(q, r) for r, q in arrs]
    shift = registration.phase_shift
    registration.phase_shift, registration.ECC_WINDOWED = old_phase_shift, False
    before = [registration.register(q, r) for r, q in arrs]
    registration.phase_shift, registration.ECC_WINDOWED, registration.GUARD_LIKE_FOR_LIKE = shift, True, guard
    diff = max(float(np.abs(a.matrix - b.matrix).max()) for a, b in zip(now, before, strict=True))
    same = all(a.method == b.method for a, b in zip(now, before, strict=True))
    print(f"{len(arrs)} pairs: largest matrix difference {diff}, same methods: {same}")


def register_ms(pairs: list[Pair]) -> float:
    """Median time of ``register`` alone over the pairs (256 px float inputs, as the inspection gives it)."""
    times = []
    for ref, query, _ in pairs:
        r, q = (cv2.resize(x, (256, 256)).astype(np.float32) / 255.0 for x in (ref, query))
        t = time.perf_counter()
        registration.register(q, r)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="pairs per procedural and photo set")
    ap.add_argument("--per-type", type=int, default=60, help="ELPV test cells per type and label")
    ap.add_argument("--sets", nargs="+", default=["loose", "placed", "photos", "elpv"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["windowed", "plain guard", "as they are"],
                    choices=["windowed", "plain guard", "as they are"])
    ap.add_argument("--identical", action="store_true", help="only check the windowing against the code before")
    args = ap.parse_args()
    makers = {"loose": lambda: object_pairs(args.n, 180.0, args.seed),
              "placed": lambda: object_pairs(args.n, 3.0, args.seed + 1),
              "photos": lambda: make_pairs(args.n, 0.04, 3.0, args.seed),
              "elpv": lambda: elpv_pairs(args.per_type, args.seed)}
    if args.identical:
        identical([p for name in args.sets for p in makers[name]()])
        return
    cp = Copilot.load()
    print("| set | registration | image AUROC | false alarms | registered | register, median ms |\n"
          "|---|---|---:|---:|---:|---:|")
    for set_name in args.sets:
        pairs = makers[set_name]()
        labels = [y for _, _, y in pairs]
        for name in args.variants:
            variant(name)()
            results = [cp.inspect(q, [r]) for r, q, _ in pairs]
            scores = [res.score for res in results]
            registered = sum(res.registration.get("method", "identity") != "identity" for res in results)
            alarms = sum(res.verdict == "anomalous" for res, y in zip(results, labels, strict=True) if y == 0)
            print(f"| {set_name} ({len(pairs)}) | {name} | {roc_auc_score(labels, scores):.4f} | "
                  f"{alarms}/{labels.count(0)} | {registered}/{len(pairs)} | {register_ms(pairs):.1f} |", flush=True)
        variant("windowed")()


if __name__ == "__main__":
    main()
