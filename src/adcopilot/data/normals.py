"""Real sample photos whose licences allow commercial training, read from installed packages.

These are the sample images shipped inside scikit-image (``skimage/data``) and scikit-learn
(``sklearn/datasets/images``); nothing is downloaded. Each one was checked against the licence
notes in scikit-image's ``skimage/data/_fetchers.py`` docstrings and scikit-learn's
``sklearn/datasets/images/README.txt``; images without a licence statement there (``moon``,
``page``, ``ihc``, ``color``, the chessboards, ``logo``, ...) are NOT used. Two overlapping crops
of one photo make a reference/query pair of "the same product".

=====================  ==========================================  ==========================================
name                   licence                                     source
=====================  ==========================================  ==========================================
skimage/brick          CC0 1.0                                     cc0textures.com, Bricks25
skimage/grass          CC0 1.0                                     deviantart.com/linolafett/art/Grass-01-434853879
skimage/gravel         CC0 1.0                                     cc0textures.com, Gravel04
skimage/camera         CC0 1.0 (photographer Lav Varshney)         scikit-image sample data
skimage/coffee         CC0 1.0 (photographer Rachel Michetti)      scikit-image sample data
skimage/chelsea        CC0 1.0 (photographer Stefan van der Walt)  scikit-image sample data
skimage/cell           CC0 1.0 (Paul Müller et al.)                scikit-image sample data
skimage/retina         CC0 1.0                                     commons.wikimedia.org, Fundus photograph
skimage/horse          CC0 1.0 (Andreas Preuss)                    openclipart.org/detail/158377
skimage/microaneurysms CC0 1.0 (Andreas Maier)                     scikit-image sample data
skimage/astronaut      public domain (NASA)                        NASA Great Images, flic.kr/p/r9qvLn
skimage/rocket         public domain (SpaceX)                      flickr.com/photos/spacexphotos/16511594820
skimage/hubble         public domain (NASA)                        hubblesite.org, release 2012/37
skimage/clock          public domain (photographer S. van der Walt) scikit-image sample data
skimage/text           public domain                               en.wikipedia.org/wiki/File:Corner.png
skimage/coins          no known copyright restrictions             Brooklyn Museum open collection 51611
sklearn/china          CC BY 2.0, attribution: danielbuechele      flickr.com/photos/danielbuechele/6061409035
sklearn/flower         CC BY 2.0, attribution: vultilion           flickr.com/photos/vultilion/6056698931
=====================  ==========================================  ==========================================

CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/) allows commercial use with attribution;
the attribution is kept in :data:`LICENCES` and must appear in a model card that uses them.

Usage::

    photos = licensed_normal_images()
    photos[0].name, photos[0].image.shape, photos[0].licence
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalImage:
    """A real photo usable as normal training data."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    licence: str
    source: str


# name -> (package, file inside the package's data folder, licence, source)
LICENCES: dict[str, tuple[str, str, str, str]] = {
    "skimage/brick": ("skimage", "data/brick.png", "CC0 1.0", "https://cc0textures.com/view.php?tex=Bricks25"),
    "skimage/grass": ("skimage", "data/grass.png", "CC0 1.0",
                      "https://www.deviantart.com/linolafett/art/Grass-01-434853879"),
    "skimage/gravel": ("skimage", "data/gravel.png", "CC0 1.0", "https://cc0textures.com/view.php?tex=Gravel04"),
    "skimage/camera": ("skimage", "data/camera.png", "CC0 1.0 (Lav Varshney)", "scikit-image sample data"),
    "skimage/coffee": ("skimage", "data/coffee.png", "CC0 1.0 (Rachel Michetti)", "scikit-image sample data"),
    "skimage/chelsea": ("skimage", "data/chelsea.png", "CC0 1.0 (Stefan van der Walt)", "scikit-image sample data"),
    "skimage/cell": ("skimage", "data/cell.png", "CC0 1.0 (Paul Mueller et al.)", "scikit-image sample data"),
    "skimage/retina": ("skimage", "data/retina.jpg", "CC0 1.0",
                       "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg"),
    "skimage/horse": ("skimage", "data/horse.png", "CC0 1.0 (Andreas Preuss)",
                      "http://openclipart.org/detail/158377/horse-by-marauder"),
    "skimage/microaneurysms": ("skimage", "data/microaneurysms.png", "CC0 1.0 (Andreas Maier)",
                               "scikit-image sample data"),
    "skimage/astronaut": ("skimage", "data/astronaut.png", "public domain (NASA)", "https://flic.kr/p/r9qvLn"),
    "skimage/rocket": ("skimage", "data/rocket.jpg", "public domain (SpaceX)",
                       "https://www.flickr.com/photos/spacexphotos/16511594820/"),
    "skimage/hubble": ("skimage", "data/hubble_deep_field.jpg", "public domain (NASA)",
                       "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/"),
    "skimage/clock": ("skimage", "data/clock_motion.png", "public domain (Stefan van der Walt)",
                      "scikit-image sample data"),
    "skimage/text": ("skimage", "data/text.png", "public domain", "https://en.wikipedia.org/wiki/File:Corner.png"),
    "skimage/coins": ("skimage", "data/coins.png", "no known copyright restrictions",
                      "https://www.brooklynmuseum.org/opencollection/archives/image/51611"),
    "sklearn/china": ("sklearn", "datasets/images/china.jpg", "CC BY 2.0 (attribution: danielbuechele)",
                      "https://www.flickr.com/photos/danielbuechele/6061409035/"),
    "sklearn/flower": ("sklearn", "datasets/images/flower.jpg", "CC BY 2.0 (attribution: vultilion)",
                       "https://www.flickr.com/photos/vultilion/6056698931/"),
}


#: Photos kept out of every training set so that evaluation (the bundled benchmark) has real
#: normal images no model has seen: training samplers exclude them, the benchmark uses only them.
HELDOUT_FOR_EVALUATION: tuple[str, ...] = ("skimage/gravel", "skimage/coffee", "skimage/coins", "sklearn/flower")


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package (importing scikit-image is slow).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=1)
def licensed_normal_images() -> list[NormalImage]:
    """All verified photos that are installed, as RGB uint8 arrays (missing packages are skipped)."""
    out = []
    for name, (package, rel, licence, source) in LICENCES.items():
        root = _package_dir(package)
        path = root / rel if root else None
        if path is None or not path.exists():
            log.info("sample photo %s not installed; skipped", name)
            continue
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
        arr.setflags(write=False)  # shared by every caller through the cache
        out.append(NormalImage(name=name, image=arr, licence=licence, source=source))
    return out
