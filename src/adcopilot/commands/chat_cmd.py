"""``adcopilot chat QUERY --ref REF``: a multi-turn conversation about one query/reference pair.

Commands inside the chat: ``/reset`` (forget the conversation), ``/save FILE`` (write the
conversation as JSON), ``/quit`` (or end of input). Questions may also come from ``--ask``
(repeatable; answered in order, then the chat ends), which makes the command scriptable.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from adcopilot.errors import AdcopilotError

HELP = "Commands: /reset (new conversation), /save FILE (write it as JSON), /quit."


def save_conversation(path: Path, query: str, refs: list[str], model: str, history: list[dict]) -> None:
    """Write the conversation as JSON ({"query", "references", "model", "turns"})."""
    data = {"query": query, "references": refs, "model": model, "turns": history}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
    except OSError as exc:
        raise AdcopilotError(f"{path}: cannot write the conversation ({exc.strerror or exc})") from None


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat(
        query: Path = typer.Argument(..., help="The image to talk about."),
        ref: list[Path] = typer.Option(..., "--ref", "-r", help="A normal reference image (repeatable)."),
        model: str = typer.Option("default", "--model", "-m", help="'default' or a checkpoint folder with a language model."),
        ask: list[str] = typer.Option(None, "--ask", help="Ask these questions in order and stop (no prompt)."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Longest answer, in tokens."),
        product: str = typer.Option(None, "--product", help="What the references show (e.g. 'bottle'): object questions use it."),
        material: str = typer.Option(None, "--material", help="The product's material (e.g. 'brown glass')."),
        knowledge: list[Path] = typer.Option(None, "--knowledge", help="Extra knowledge: YAML, or MMAD's domain_knowledge.json."),
    ) -> None:
        """Talk with the model about QUERY compared with the normal references."""
        from adcopilot.api import Copilot
        from adcopilot.imaging import load_image
        from adcopilot.language.answering import context_options
        from adcopilot.protocols import require_answerer

        if max_new_tokens < 1:
            raise AdcopilotError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        if any(not q.strip() for q in ask or []):
            raise AdcopilotError("--ask: the question is empty")
        load_image(query, name=str(query))  # fail early on a bad file
        for r in ref:
            load_image(r, name=str(r))
        cp = Copilot.load(model)
        cp = require_answerer(cp)
        context = context_options(cp, product, material, [str(k) for k in knowledge or []])
        history: list[dict] = []
        scripted = list(ask or [])
        if not scripted:
            typer.echo(f"Chat about {query} (references: {', '.join(map(str, ref))}). {HELP}")
        while True:
            if scripted:
                line = scripted.pop(0)
                typer.echo(f"> {line}")
            elif ask:
                break
            else:
                try:
                    line = input("> ")
                except EOFError:
                    break
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                history = []
                typer.echo("(conversation reset)")
                continue
            if text.startswith("/save"):
                target = text[5:].strip()
                if not target:
                    typer.echo("usage: /save FILE")
                    continue
                save_conversation(Path(target), str(query), [str(r) for r in ref], cp.model_name, history)
                typer.echo(f"(saved to {target})")
                continue
            if text.startswith("/"):
                typer.echo(f"unknown command {text.split()[0]}. {HELP}")
                continue
            if hasattr(cp, "full"):
                answer, history = cp.chat(query, ref, text, history=history)
            else:
                answer = cp.ask(query, ref, text, history=history, max_new_tokens=max_new_tokens, **context)
                history = [*history, {"role": "user", "content": text}, {"role": "assistant", "content": answer}]
            typer.echo(answer)
