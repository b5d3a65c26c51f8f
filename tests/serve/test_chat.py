"""`r1v chat`: streams thinking and answer separately; bad images fail with a clear message."""

from __future__ import annotations

import io

from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from r1v.cli import app
from r1v.serve.chat import run_chat


def _png(path):
    img = Image.new("RGB", (80, 50), "white")
    img.paste((0, 0, 255), (5, 5, 30, 30))
    img.save(path)
    return path


def test_run_chat_streams_think_then_answer(tmp_path) -> None:
    buf = io.StringIO()
    c = run_chat(model="tiny", question="What colour is the square?", images=[_png(tmp_path / "a.png")],
                 max_new_tokens=10, max_think_tokens=3, temperature=0.0, console=Console(file=buf, width=120))
    out = buf.getvalue()
    assert "thinking" in out and "answer" in out  # the budget forces </think>, so both phases appear
    assert out.index("thinking") < out.index("answer")
    assert c.num_think_tokens <= 3 and len(c.token_ids) <= 10


def test_cli_chat_with_two_images_and_no_think(tmp_path) -> None:
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    res = CliRunner().invoke(app, ["chat", "--model", "tiny", "--image", str(a), "--image", str(b),
                                   "--no-think", "--max-new-tokens", "5", "--temperature", "0", "Compare."])
    assert res.exit_code == 0, res.output
    assert "finish:" in res.output


def test_cli_chat_bad_image_names_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    res = CliRunner().invoke(app, ["chat", "--model", "tiny", "--image", str(bad), "q"])
    assert res.exit_code == 2
    assert "broken.png" in res.output
