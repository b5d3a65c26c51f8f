"""Agent tools and the registry: BM25 search, nearest-image search, local web visits, the code tool."""

import json

from PIL import Image

from r1v.agent.protocol import ToolCall
from r1v.agent.tools import (
    BM25,
    CodeTool,
    ImageSearchTool,
    TextSearchTool,
    ToolContext,
    ToolRegistry,
    WebVisitTool,
    default_registry,
)


def _ctx(tmp_path, images=()):
    return ToolContext(list(images), tmp_path / "work")


def test_bm25_ranks_rare_matching_terms_first():
    docs = ["the cat sat on the mat", "the dog ran", "a cat and a cat and a kitten", "nothing here"]
    bm = BM25(docs)
    hits = bm.search("cat kitten", k=2)
    assert [i for i, _ in hits] == [2, 0]
    assert bm.search("zebra") == []


def test_text_search_over_a_folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Eiffel\n\nThe Eiffel Tower is in Paris.\n\nIt was built in 1889.")
    (docs / "b.txt").write_text("Mount Fuji is in Japan.")
    (docs / "c.bin").write_text("Eiffel Eiffel Eiffel")  # not a document type
    r = TextSearchTool(docs)({"query": "when was the eiffel tower built"}, _ctx(tmp_path))
    assert r.ok and r.text.splitlines()[0].startswith("[1] a.md") and "1889" in r.text
    assert "c.bin" not in r.text
    assert "no document" in TextSearchTool(docs)({"query": "zebra"}, _ctx(tmp_path)).text


def test_image_search_finds_the_nearest(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name, colour in [("red.png", (230, 20, 20)), ("green.png", (20, 200, 40)), ("blue.png", (20, 40, 230))]:
        Image.new("RGB", (40, 40), colour).save(lib / name)
    query = tmp_path / "q.png"
    Image.new("RGB", (64, 64), (40, 190, 60)).save(query)
    r = ImageSearchTool(lib)({"image_index": 0}, _ctx(tmp_path, [query]))
    assert r.ok and r.text.startswith("[1] green.png") and r.images == [lib / "green.png"]
    bad = ImageSearchTool(lib)({"image_index": 3}, _ctx(tmp_path, [query]))
    assert not bad.ok and "image_index" in bad.error


def test_web_visit_reads_only_the_allow_list(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "p.html").write_text("<html><script>evil()</script><h1>Title</h1><p>Body text</p></html>")
    (pages / "urls.json").write_text(json.dumps({"https://example.org/x": "p.html"}))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    tool = WebVisitTool([pages])
    for url in ("https://example.org/x", f"file://{pages / 'p.html'}", "p.html"):
        r = tool({"url": url}, _ctx(tmp_path))
        assert r.ok and "Body text" in r.text and "evil" not in r.text, url
    for url in ("https://example.org/other", f"file://{secret}", "../secret.txt", str(secret)):
        r = tool({"url": url}, _ctx(tmp_path))
        assert not r.ok and "no network" in r.error, url


def test_registry_reports_problems_as_results(tmp_path):
    reg = default_registry(docs_dir=tmp_path)
    assert reg.names == ["code", "text_search"]
    assert "code(code: str)" in reg.describe()
    r = reg.call(ToolCall("nope", {}), _ctx(tmp_path))
    assert not r.ok and "unknown tool" in r.error and "code" in r.error
    r = reg.call(ToolCall("text_search", {}), _ctx(tmp_path))
    assert not r.ok and "query" in r.error

    class Boom:
        name, description, parameters = "boom", "fails", {}

        def __call__(self, arguments, context):
            raise RuntimeError("kaput")

    r = ToolRegistry([Boom()]).call(ToolCall("boom", {}), _ctx(tmp_path))
    assert not r.ok and "kaput" in r.error


def test_code_tool_crops_the_image_in_the_sandbox(tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (100, 50), (10, 20, 30)).save(img)
    tool = CodeTool()
    r = tool({"code": "print(image.size)\nsave(image.crop((0, 0, 20, 10)).resize((40, 20)))"}, _ctx(tmp_path, [img]))
    assert r.ok, r.error
    assert "(100, 50)" in r.text and len(r.images) == 1
    with Image.open(r.images[0]) as out:
        assert out.size == (40, 20)
    bad = tool({"code": "raise ValueError('nope')"}, _ctx(tmp_path, [img]))
    assert not bad.ok and "ValueError" in bad.text + (bad.error or "")
