"""The batch on Ray: the local engine's inspection spread over a pool of actors with Ray Data.

The driver (this process) plans the run exactly as :func:`adcopilot.line.batch.run_batch` does:
the output folder is checked (another run's results are refused), the references are loaded and
their global features computed once, and finished queries are left out. The queries left go to
Ray Data's ``map_batches`` over an actor pool; each actor builds its own model with ``loader`` and
inspects blocks of ``BatchConfig.chunk`` queries: decode (a few threads), choose the nearest
references from the driver's bank, inspect, draw the annotated pictures. A block comes back as
records and JPEG bytes; the driver writes the pictures, then appends the records to
``results.jsonl`` and flushes, so an interruption loses nothing that came back. Bad files are
skipped and listed as in the local engine, and the report is the same.

Ray is local by default: started here with every core of this machine, bound to 127.0.0.1, without
dashboard or usage statistics, and stopped at the end. With ``address`` the run joins a cluster;
every node then needs adcopilot and its assets installed, and must read the lot and the references
at the same paths (shared storage). Only the driver writes to the output folder.

Usage::

    summary = run_batch_ray(ModelLoader("baseline"), collect(["lot/"]), ["normals/"], "out",
                            BatchConfig(chunk=4), RayConfig(actors=2))
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.line.batch import (
    BatchConfig,
    BatchPlan,
    BatchSummary,
    Loaded,
    ResultWriter,
    finish_batch,
    inspect_loaded,
    load_query,
    picture_bytes,
    plan_batch,
    write_asset,
)
from adcopilot.line.references import ReferenceBank, tower_for
from adcopilot.line.runtime import ModelLoader, default_threads
from adcopilot.line.sources import LotItem
from adcopilot.paths import name_bytes

log = logging.getLogger(__name__)

NO_RAY = "--engine ray needs Ray, an optional extra: pip install 'adcopilot[ray]'"


def require_ray() -> None:
    """Refuse, in one line naming the extra, when Ray is not installed."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise AdcopilotError(NO_RAY)


def _ray(local: bool) -> ModuleType:
    """Ray with Ray Data, imported on first use. Ray reads whether it may span machines once, when
    imported; a local Ray that may not takes 127.0.0.1 as its address instead of finding one by
    routing towards a public DNS server. So the import waits until the run knows which it is."""
    require_ray()
    if local and "ray" not in sys.modules:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    importlib.import_module("ray.data")
    return importlib.import_module("ray")


@dataclass
class RayConfig:
    address: str | None = None  # a running cluster ("host:port", "ray://host:port", "auto"); None: start one here
    actors: int | None = None  # actor pool size; None: the cluster's CPUs // cpus_per_actor
    cpus_per_actor: int = 1  # CPUs reserved by each actor, and its model's compute threads


class InspectWorker:
    """One actor of the pool: its own model, inspecting blocks of queries given by their index."""

    def __init__(
        self,
        loader: Callable[[], Copilot],
        bank: ReferenceBank,
        config: BatchConfig,
        need_select: bool,
        expect: tuple[str, float],
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.copilot = loader()
        got = (self.copilot.model_name, round(self.copilot.threshold_with(config.shots), 6))  # the lot's count
        if got != (expect[0], round(expect[1], 6)):
            raise AdcopilotError(f"an actor loaded model {got[0]} with threshold {got[1]}, the driver"
                                 f" {expect[0]} with threshold {expect[1]}: install the same model everywhere")
        self.bank, self.cfg = bank, config
        self.tower = tower_for(self.copilot.detector) if need_select else None
        self.pool = ThreadPoolExecutor(max(1, config.workers), thread_name_prefix="ray-batch-io")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queries as rows (index, path and key as bytes, truth) -> the same index with "record" and
        "error" (JSON text, one of them empty) and "annotated" / "thumb" (JPEG bytes, empty without pictures)."""
        index = [int(i) for i in batch["index"]]
        items = [
            LotItem(Path(os.fsdecode(bytes(p))), os.fsdecode(bytes(k)), str(t) or None)
            for p, k, t in zip(batch["path"], batch["key"], batch["truth"], strict=True)
        ]
        # Decoded by the threads in order, while the model works on the queries before.
        loaded: Iterator[Loaded] = self.pool.map(lambda it: load_query(it, self.tower, getattr(self.copilot, "draft_size", None)), items)
        out: dict[str, list[Any]] = {"record": [], "error": [], "annotated": [], "thumb": []}
        for x in loaded:
            got = inspect_loaded(self.copilot, self.bank, x, self.cfg) if x.error is None else None
            pictures = (b"", b"")
            if got is not None and self.cfg.save_images:
                pictures = picture_bytes(x.image, got[1], self.cfg.thumb_size)
            # JSON text keeps names that are not valid UTF-8 (lone surrogates) through Arrow.
            out["record"].append(json.dumps(got[0]) if got is not None else "")
            out["error"].append(json.dumps(x.error) if x.error is not None else "")
            out["annotated"].append(pictures[0])
            out["thumb"].append(pictures[1])
        return {"index": np.asarray(index, dtype=np.int64), **{k: np.array(v, dtype=object) for k, v in out.items()}}


#: The environment a local Ray's processes start with, so that they contact nothing but this machine:
#: they too take 127.0.0.1 as their address, and the head's question to cloud metadata servers
#: (169.254.169.254, metadata.google.internal), which it asks even with usage statistics off, goes
#: to a closed local port instead.
LOCAL_ONLY = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables while the block runs (inherited by processes it starts)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _host_port(address: str) -> tuple[str, int] | None:
    """("host", port) of "host:port" or "ray://host:port"; None for "auto" and other forms."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else None


def is_this_machine(address: str | None) -> bool:
    """No address, or a loopback one: the Ray of this machine alone (Ray would otherwise replace
    127.0.0.1 by this machine's network address, where a Ray started on loopback does not listen)."""
    if not address:
        return True
    hp = _host_port(address)
    return hp is not None and (hp[0] == "localhost" or hp[0] == "::1" or hp[0].startswith("127."))


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a cluster address where nothing answers: Ray itself would retry for many minutes.
    ("auto" and other forms without a port are left to Ray.)"""
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise AdcopilotError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


@contextmanager
def ray_session(rcfg: RayConfig) -> Iterator[int]:
    """Ray for the run, yielding the CPUs it has: joined at ``rcfg.address``, or started on this
    machine (localhost only) and stopped afterwards. A Ray already running in this process is used."""
    ray = _ray(local=is_this_machine(rcfg.address))
    if ray.is_initialized():
        yield int(ray.cluster_resources().get("CPU", 1))
        return
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would otherwise report usage to its makers
    # Ray's own notices (token authentication, progress bars, "execution finished") are not the run's.
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        if rcfg.address:
            ray.init(address=rcfg.address, **quiet)
        else:
            with _environment(LOCAL_ONLY):
                ray.init(address="local", num_cpus=default_threads(reserve=0), include_dashboard=False,
                         _node_ip_address="127.0.0.1", **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--address {rcfg.address}" if rcfg.address else "a local Ray"
        raise AdcopilotError(f"{where}: cannot start or join Ray ({exc})") from None
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def user_error(exc: BaseException, ray_error: type[BaseException]) -> AdcopilotError | None:
    """What failed, in one line, when it was the user's input or setup: the AdcopilotError an actor
    raised, found inside Ray's wrapping, or a node without adcopilot (or without this version)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # Ray re-raises an actor's error as a class deriving from both RayError and the error's own.
        if isinstance(e, AdcopilotError) and not isinstance(e, ray_error):
            return AdcopilotError(str(e))
        missing = re.search(r"No module named '(adcopilot[\w.]*)'", str(e))
        if missing:
            return AdcopilotError(f"a Ray worker cannot import {missing.group(1)}: install this adcopilot"
                                  " (and its assets) on every node of the cluster")
        todo.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return None


def query_rows(items: Sequence[LotItem]) -> list[dict[str, Any]]:
    """The dataset's rows: each query's index in ``items``, file and key as bytes (Arrow's text
    must be UTF-8, a file name need not be), and truth ("" when unknown)."""
    return [{"index": i, "path": name_bytes(it.path), "key": name_bytes(it.key), "truth": it.truth or ""}
            for i, it in enumerate(items)]


def _blocks(plan: BatchPlan, loader: Callable[[], Copilot], copilot: Copilot, cfg: BatchConfig,
            rcfg: RayConfig, cpus: int) -> Iterator[dict[str, np.ndarray]]:
    """The inspected blocks as they come back from the actor pool (in no particular order)."""
    n, chunk = len(plan.todo), max(1, cfg.chunk)
    blocks = math.ceil(n / chunk)
    actors = max(1, min(rcfg.actors or cpus // max(1, rcfg.cpus_per_actor), blocks))
    ray = _ray(local=is_this_machine(rcfg.address))  # already imported by the session
    log.info("Ray: %d actors of %d CPU on %d CPUs, %d blocks of %d queries", actors, rcfg.cpus_per_actor,
             cpus, blocks, chunk)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.from_items(query_rows(plan.todo), override_num_blocks=blocks)
    ds = ds.map_batches(
        InspectWorker,
        batch_size=chunk,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=rcfg.cpus_per_actor,
        fn_constructor_kwargs={
            "loader": loader, "bank": plan.bank, "config": cfg,
            "need_select": plan.need_select, "expect": (copilot.model_name, copilot.threshold_with(cfg.shots)),
            "threads": rcfg.cpus_per_actor,
        },
    )
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as exc:  # Ray wraps what an actor raised; bad input is still one line
        user = user_error(exc, ray.exceptions.RayError)
        if user is None:
            raise
        raise user from None


def run_batch_ray(
    loader: Callable[[], Copilot],
    queries: Sequence[LotItem],
    references: Sequence[str | os.PathLike] | ReferenceBank,
    out_dir: str | os.PathLike,
    config: BatchConfig | None = None,
    ray_config: RayConfig | None = None,
) -> BatchSummary:
    """Inspect this shard's queries not yet in the results on Ray; write the local engine's outputs."""
    require_ray()
    cfg, rcfg = config or BatchConfig(), ray_config or RayConfig()
    if rcfg.address:  # before the model loads: a wrong address is the likeliest mistake
        check_reachable(rcfg.address)
    copilot = loader()
    plan = plan_batch(copilot, queries, references, out_dir, cfg)
    if isinstance(loader, ModelLoader) and copilot.fixed_threshold:  # every actor decides with the driver's
        loader = replace(loader, threshold=copilot.threshold_with(cfg.shots))  # (calibrated) threshold for the lot's count
    t0 = time.perf_counter()
    with (
        ResultWriter(plan) as writer,
        tqdm(total=len(plan.todo), unit="img", desc="inspect", disable=not cfg.progress, dynamic_ncols=True) as bar,
    ):
        if plan.todo:
            with ray_session(rcfg) as cpus:
                for block in _blocks(plan, loader, copilot, cfg, rcfg, cpus):
                    write_block(plan, writer, block)
                    bar.update(len(block["index"]))
    return finish_batch(plan, cfg, time.perf_counter() - t0)


def write_block(plan: BatchPlan, writer: ResultWriter, block: dict[str, np.ndarray]) -> None:
    """Pictures first, then the records (flushed): a record in the results has its pictures."""
    for i, rec_text, err_text, annotated, thumb in zip(
        block["index"], block["record"], block["error"], block["annotated"], block["thumb"], strict=True
    ):
        item = plan.todo[int(i)]
        if err_text:
            writer.skip(item.key, json.loads(err_text))
            continue
        rec = json.loads(rec_text)
        if "annotated" in rec:
            write_asset(plan.out / rec["annotated"], bytes(annotated))
            write_asset(plan.out / rec["thumb"], bytes(thumb))
        writer.record(rec)
    writer.flush()
