"""The CLI: bad input gives one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def run(*args: str, env_home=None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_home:
        env["ADCOPILOT_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "adcopilot", *args], capture_output=True, text=True, env=env)


def test_corrupt_query_one_line_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    p = run("inspect", str(bad), "--ref", str(good), "--model", "baseline")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and "broken.png" in lines[0]


def test_missing_reference(tmp_path):
    q = tmp_path / "q.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(q)
    p = run("inspect", str(q), "--ref", str(tmp_path / "absent.png"), "--model", "baseline")
    assert p.returncode == 2 and "absent.png: no such file" in p.stderr and "Traceback" not in p.stderr


def test_unknown_option_and_model(tmp_path):
    p = run("inspect", "x.png", "--ref", "y.png", "--frobnicate")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    q = tmp_path / "q.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(q)
    p = run("inspect", str(q), "--ref", str(q), "--model", str(tmp_path / "nomodel"))
    assert p.returncode == 2 and "nomodel: no such model" in p.stderr


def test_models_json_lists_assets(tmp_path):
    p = run("models", "--json", env_home=tmp_path)
    assert p.returncode == 0
    names = {r["name"] for r in json.loads(p.stdout)}
    assert {"efficientnet-lite0", "smollm2-135m", "elpv"} <= names


def test_missing_asset_message_names_the_fetch_command(tmp_path, monkeypatch):
    from adcopilot import assets
    from adcopilot.errors import AssetMissingError

    monkeypatch.setenv("ADCOPILOT_HOME", str(tmp_path))
    monkeypatch.setattr(assets.Asset, "installed_path", lambda self: None)
    try:
        assets.require("smollm2-135m")
    except AssetMissingError as exc:
        assert "adcopilot models fetch smollm2-135m" in str(exc)
    else:
        raise AssertionError("expected AssetMissingError")


def test_file_system_errors_on_a_named_path_are_one_plain_line(tmp_path):
    import errno
    import os

    from adcopilot.cli import path_error_line

    a_file = tmp_path / "runs"
    a_file.write_text("x")
    assert path_error_line(FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(a_file))) == \
        f"{a_file}: a file is there, not a folder"
    assert path_error_line(FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(tmp_path))) == \
        f"{tmp_path}: already exists"
    assert path_error_line(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(a_file / "x"))) == \
        f"{a_file / 'x'}: part of the path is a file, not a folder"
    assert path_error_line(OSError(errno.EIO, "Input/output error", "/dev/sdz")) == "/dev/sdz: Input/output error"
    assert path_error_line(OSError(errno.EIO, "Input/output error")) is None  # no path: a fault, not a mistake
    bad = os.fsdecode(b"/tmp/\xff.png")  # an undecodable name still gives one valid line
    assert path_error_line(PermissionError(errno.EACCES, "Permission denied", bad)) == "/tmp/\\xff.png: permission denied"
