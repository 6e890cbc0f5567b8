"""Object questions without product context, on training photos only: how the ImageNet match is chosen.

Each licensed training photo (never the bundled benchmark's held-out photos) gets a name and a use
written here; its questions ask "What is the object?" (options: names) and "What is it used for?"
(options: uses), the right option among 3 distractors drawn from the built-in knowledge's objects
(industrial parts, the names and uses MMAD's questions offer). The tower's ImageNet probabilities of
the photo at 256 px are matched to the options (``adcopilot.language.objects``) in several variants:
how many likely classes, with or without subtracting each option's mean similarity to all classes.

    python benchmarks/object_questions.py --draws 20
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from adcopilot.data.knowledge import Knowledge
from adcopilot.data.normals import licensed_normal_images
from adcopilot.eval.bundled import BUNDLED_HELDOUT_SOURCES
from adcopilot.imaging import to_float_array
from adcopilot.language.knowledge_match import default_matcher
from adcopilot.language.objects import choose_object, class_names, class_probabilities
from adcopilot.model.backbone import load_backbone
from adcopilot.model.detector import to_batch

#: photo -> (name, use), written for this benchmark.
TRUTH: dict[str, tuple[str, str]] = {
    "skimage/brick": ("Brick wall", "Building material for walls"),
    "skimage/grass": ("Grass", "Ground cover for lawns and fields"),
    "skimage/camera": ("Camera", "Takes photographs"),
    "skimage/chelsea": ("Cat", "A domestic animal kept as a pet"),
    "skimage/cell": ("Cell", "The basic unit of living organisms"),
    "skimage/retina": ("Retina", "Senses light at the back of the eye"),
    "skimage/horse": ("Horse", "An animal used for riding and carrying loads"),
    "skimage/astronaut": ("Astronaut", "A person trained to travel in space"),
    "skimage/rocket": ("Rocket", "Launches payloads into space"),
    "skimage/hubble": ("Galaxies", "Distant galaxies seen through a space telescope"),
    "skimage/clock": ("Clock", "Shows the time"),
    "skimage/text": ("Text", "Written words to be read"),
    "sklearn/china": ("Temple", "A building for worship"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=20, help="distractor draws per photo and question")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    kb = Knowledge.load()
    pool = {
        "name": sorted({o.name.capitalize() for o in kb.objects.values()}),
        "use": sorted({o.function[:1].upper() + o.function[1:] for o in kb.objects.values() if o.function}),
    }
    tower = load_backbone()
    matcher = default_matcher()
    names = list(class_names())
    photos = [p for p in licensed_normal_images() if p.name in TRUTH and p.name not in BUNDLED_HELDOUT_SOURCES]
    probs = {}
    with torch.no_grad():
        for p in photos:
            _, glob = tower.features(to_batch([to_float_array(Image.fromarray(p.image), 256)]))
            probs[p.name] = class_probabilities(tower, glob)

    variants = [(top, centred) for top in (1, 5, 20, 1000) for centred in (False, True)]
    table: dict[str, dict[str, float]] = {}
    for kind, col in (("name", 0), ("use", 1)):
        rng = np.random.default_rng(args.seed)
        right = dict.fromkeys([*map(str, variants), "choose_object"], 0)
        total = 0
        for p in photos:
            truth = TRUTH[p.name][col]
            for _ in range(args.draws):
                opts = [truth, *rng.choice([o for o in pool[kind] if o != truth], 3, replace=False)]
                sim = matcher.similarity(opts, names)  # (4, 1000)
                order = np.argsort(-probs[p.name], kind="stable")
                for top, centred in variants:
                    idx = order[:top]
                    w = probs[p.name][idx] / probs[p.name][idx].sum()
                    s = sim[:, idx] @ w - (sim.mean(axis=1) if centred else 0.0)
                    right[str((top, centred))] += int(np.argmax(s) == 0)
                letters = dict(zip("ABCD", opts, strict=True))
                right["choose_object"] += int(choose_object(probs[p.name], letters, matcher) == "A")
                total += 1
        table[kind] = {k: round(100.0 * v / total, 1) for k, v in right.items()}
        table[kind]["questions"] = total
    print(json.dumps({"matcher": matcher.name, "photos": len(photos), "accuracy_percent": table}, indent=2))


if __name__ == "__main__":
    main()
