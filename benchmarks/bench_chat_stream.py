"""First streamed token of a chat answer: ``adcopilot serve`` on one compute thread, timed by a client.

Starts ``adcopilot serve --threads 1`` (a separate process, the model's compute on one thread),
asks one question to load the language model, then, for ``--pairs`` pairs of the bundled
benchmark's held-out photos (a template and a query; anomalous and normal queries alternate) and
each of three free questions, sends ``POST /v1/chat/completions`` with ``"stream": true`` (the two
images as PNG data URLs, as the files are) and records, from the moment the request is sent:

- the first token: the first server-sent event that carries answer text;
- the whole answer: ``data: [DONE]``;

the number of answer tokens (``stream_options.include_usage``), and the CPU time the server
process used from the request to the first token (what the wall time would be on a core of its
own; on a shared, loaded machine the wall time is longer). The first request after the
server started (the language model loaded) is reported apart. Each pair is new to the server when
its first question comes (its query never seen; a template may have been, as a line's references
are); the next questions reuse the pair's encodings, as in a conversation. The three questions are
two that are answered from the inspection (a defect question, a yes/no defect question) and one
that the language model answers (an object question, no product given); which of them opens a pair
rotates, so each kind is measured as a new pair's first question and as a later one. With
``--line``, every query of a product is compared with that product's first template, as an
inspection line compares its parts with one reference set.

Usage::

    python benchmarks/bench_chat_stream.py [--pairs 10] [--max-tokens 64] [--port 8765] [--line]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import httpx

QUESTIONS = ("What is the defect and where is it?", "Is there any defect in the object?", "What is this object used for?")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_once(url: str, body: dict, pid: int) -> tuple[float, float, int, float]:
    """(seconds to the first answer text, seconds to [DONE], answer tokens, CPU seconds the server
    used up to the first answer text) of one streamed request."""
    c0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    first = None
    cpu = float("nan")
    tokens = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - t0
                cpu = cpu_seconds(pid) - c0
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return (first if first is not None else float("nan")), time.perf_counter() - t0, tokens, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--line", action="store_true", help="one template per product (a line's reference set)")
    args = ap.parse_args()

    from adcopilot.eval.bundled import ensure_bundled
    from adcopilot.eval.mmad import load_mmad
    from adcopilot.eval.openai_protocols import file_image

    bench = load_mmad(ensure_bundled(progress=False))
    photos = [it for it in bench.items if it.dataset == "HeldOut-Photos"]
    bad, good = [it for it in photos if not it.is_normal], [it for it in photos if it.is_normal]
    chosen = []  # anomalous and normal queries in turn, spread over the photos
    for b, g in zip(bad[:: max(1, len(bad) // args.pairs)], good[:: max(1, len(good) // args.pairs)], strict=False):
        chosen += [b, g]
    chosen = chosen[: args.pairs + 1]  # the first one loads the language model

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "adcopilot", "serve", "--port", str(args.port), "--threads", "1"],
                            env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)

        templates: dict[str, object] = {}  # product -> its first template (--line)

        def body(item, question: str) -> dict:
            template = bench.references(item, 1)[0]
            if args.line:
                template = templates.setdefault(item.key.split("/")[1], template)
            images = [template, bench.query(item)]
            content = [{"type": "image_url", "image_url": {"url": file_image(p, None)[0]}} for p in images]
            content.append({"type": "text", "text": question})
            return {"model": "default", "messages": [{"role": "user", "content": content}], "stream": True,
                    "max_tokens": args.max_tokens, "stream_options": {"include_usage": True}}

        cold = stream_once(url, body(chosen[0], QUESTIONS[0]), proc.pid)
        rows: list[tuple[str, str, float, float, int, float, bool]] = []
        for i, item in enumerate(chosen[1:]):
            for j in range(len(QUESTIONS)):  # the pair's first question rotates over the kinds
                q = QUESTIONS[(i + j) % len(QUESTIONS)]
                first, total, tokens, cpu = stream_once(url, body(item, q), proc.pid)
                rows.append((item.key, q, first, total, tokens, cpu, j == 0))
                print(f"{first:6.3f} s first token ({cpu:5.2f} CPU s)  {total:6.3f} s whole ({tokens:2d} tokens)"
                      f"  {item.key}  {q}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def summary(values: list[float]) -> str:
        s = sorted(values)
        return f"median {statistics.median(s):.3f} s, p90 {s[int(0.9 * (len(s) - 1))]:.3f} s, max {s[-1]:.3f} s"

    new_pair = [r for r in rows if r[6]]
    print(f"\nfirst request after start (language model loading): first token {cold[0]:.2f} s, whole {cold[1]:.2f} s")
    print(f"first token, all {len(rows)} requests: {summary([r[2] for r in rows])}")
    print(f"first token, a pair's first question ({len(new_pair)}): {summary([r[2] for r in new_pair])}")
    print(f"server CPU to the first token, all: {summary([r[5] for r in rows])}")
    print(f"server CPU to the first token, a pair's first question: {summary([r[5] for r in new_pair])}")
    for q in QUESTIONS:
        for opens, what in ((True, "opening a pair"), (False, "later")):
            sel = [r for r in rows if r[1] == q and r[6] == opens]
            if sel:
                print(f"{q!r} {what} ({len(sel)}): first token {summary([r[2] for r in sel])};"
                      f" server CPU {summary([r[5] for r in sel])}")
    print(f"whole answer: {summary([r[3] for r in rows])}; tokens: median {statistics.median(r[4] for r in rows):.0f}")
    print(f"within 1 s: {sum(r[2] <= 1.0 for r in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()
