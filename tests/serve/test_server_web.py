"""The chat page end to end in headless Chromium (Debian's /usr/bin/chromium driven by playwright).

Upload an image, ask, watch the thinking (collapsible) and the answer stream in; the streamed answer must
equal what the API returns for the same greedy request. Skips when no Chromium is installed (.ci/run
installs it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest
from PIL import Image

from r1v.model.build import load_vlm
from r1v.rollout.engine import TransformersEngine
from r1v.serve.app import ServeSettings, create_app
from r1v.serve.server import BackgroundServer

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python package) not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
KEY = "page-key"


@pytest.fixture(scope="module")
def server():
    app = create_app(TransformersEngine(load_vlm("tiny")), ServeSettings(model_name="tiny", api_key=KEY))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                   args=FLAGS)
        ctx.set_default_timeout(60_000)
        page = ctx.new_page()
        page.csp_errors = []  # the page runs under its own Content-Security-Policy; it must not trip it
        page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_errors.append(m.text))
        yield page
        assert not page.csp_errors
        ctx.close()


def _ask(page, question: str) -> None:
    page.fill("#question", question)
    page.fill("#max_tokens", "12")
    page.fill("#max_think", "3")
    page.fill("#temperature", "0")
    page.click("#send")


def test_upload_ask_and_stream(server, page, tmp_path) -> None:
    img = tmp_path / "red.png"
    Image.new("RGB", (60, 40), "red").save(img)
    page.goto(server.url + "/")
    page.fill("#api_key", KEY)
    page.dispatch_event("#api_key", "change")
    page.wait_for_selector("#model:has-text('tiny')")  # the page read /v1/models with the key
    page.set_input_files("#file", str(img))
    page.wait_for_selector("#preview img")
    _ask(page, "What colour is it?")
    turn = page.wait_for_selector(".turn[data-state=done]")
    assert turn.query_selector(".user").text_content() == "What colour is it?"
    assert turn.query_selector("img") is not None  # the uploaded image is shown with the question
    think = turn.query_selector("details.thinking")
    assert think.is_visible() and turn.query_selector("details.thinking .text").text_content()
    answer = turn.query_selector(".answer").text_content()
    assert "finish:" in turn.query_selector(".meta").text_content()
    if answer.strip():  # the thought folds away once the answer streams in
        assert think.get_attribute("open") is None
    # the same greedy request through the API gives the same answer
    url = page.evaluate("document.querySelector('.turn img').src")
    api = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    ref = api.chat.completions.create(model="tiny", max_tokens=12, temperature=0, extra_body={"max_think_tokens": 3},
                                      messages=[{"role": "user", "content": [
                                          {"type": "image_url", "image_url": {"url": url}},
                                          {"type": "text", "text": "What colour is it?"}]}])
    assert answer.strip() == ref.choices[0].message.content


def test_paste_image_and_follow_up(server, page) -> None:
    page.evaluate("""async () => {
        const c = document.createElement('canvas'); c.width = 30; c.height = 30;
        const g = c.getContext('2d'); g.fillStyle = 'blue'; g.fillRect(0, 0, 30, 30);
        const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
        const dt = new DataTransfer(); dt.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
        document.getElementById('question').dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));
    }""")
    page.wait_for_selector("#preview img")
    _ask(page, "And this one?")
    page.wait_for_selector(".turn[data-state=done] >> nth=1")
    assert page.query_selector_all(".turn")[1].query_selector("img") is not None


def test_wrong_key_shows_an_error(server, page) -> None:
    page.fill("#api_key", "wrong")
    _ask(page, "hello")
    turn = page.wait_for_selector(".turn[data-state=error]")
    assert "401" in turn.query_selector(".error").text_content()
