"""QDAM/VTIA scorers: pixel clarity, text heuristics ordering as expected, judge parsing and fallbacks."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from PIL import Image, ImageFilter

from r1v.data import quality as sc
from r1v.data.schema import Sample
from r1v.eval.judge import Judge


def checkerboard(size: int, cell: int = 8) -> Image.Image:
    idx = np.indices((size, size)) // cell
    arr = ((idx[0] + idx[1]) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([arr] * 3, -1))


def test_laplacian_variance_by_hand() -> None:
    g = np.zeros((3, 4))
    g[1, 1] = 1.0  # interior Laplacians: -4 at (1,1), +1 at (1,2) -> variance 6.25
    assert sc.laplacian_variance(g) == pytest.approx(6.25)
    assert sc.laplacian_variance(np.full((10, 10), 7.0)) == 0.0


def test_clarity_orders_sharp_blurred_and_small() -> None:
    sharp = checkerboard(448)
    blurred = sharp.filter(ImageFilter.GaussianBlur(6))
    small = checkerboard(112)
    c_sharp, c_blur, c_small = (sc.clarity(im, tile_size=448) for im in (sharp, blurred, small))
    assert c_sharp > c_blur
    assert c_sharp > c_small
    assert sc.resolution_score(112, 112, 448) == pytest.approx(0.25)
    assert sc.resolution_score(1000, 900, 448) == 1.0
    assert sc.clarity(Image.new("RGB", (448, 448), "white")) == pytest.approx(0.5)  # flat: sharpness 0


def test_necessity_orders() -> None:
    qs = ["What is 2+3?", "How many circles are in the image?",
          "In the figure shown, how many red circles are to the left of the blue square?"]
    vals = [sc.necessity(q) for q in qs]
    assert vals[0] == 0.0
    assert vals == sorted(vals) and len(set(vals)) == 3


def test_quality_difficulty_reasoning_order() -> None:
    assert sc.question_quality("wat??? !!!!") < sc.question_quality("What is the area of the triangle?")
    assert sc.question_quality("") == 0.0
    d = [sc.difficulty(q) for q in ("What colour is it?", "Find the area of a triangle with base 6 and height 4.",
                                    "If the radius r = 3, compute the circumference and the area of the circle, "
                                    "then find their ratio.")]
    assert d[0] < d[1] < d[2]
    r = [sc.reasoning_demand(q) for q in ("What is shown?", "Add the red and blue counts.",
                                          "If there are 3 apples and then 2 more are added, how many more apples "
                                          "than pears are there in total?")]
    assert r[0] < r[1] < r[2]


def test_integration_high_for_causal_spatial_low_for_identification() -> None:
    low = sc.integration("What is the colour of the circle?")
    mid = sc.integration("How many circles are in the image?")
    high = sc.integration("Why does the ball to the left of the ramp roll faster than the block, given that "
                          "the force on both is the same?")
    assert low < mid < high
    assert 0.0 < low < 0.5 < high < 1.0
    assert sc.integration("What is 2+3?") < 0.5  # no visual reference at all: weak dependence


def test_scores_of_a_sample_are_in_range_and_image_free_sample_has_no_clarity() -> None:
    s = Sample.from_question("a", "How many red circles are shown?", images=[checkerboard(64)], answer="2")
    out = sc.Scorers().score(s)
    assert 0.0 <= out.sv <= 1.0 and 0.0 <= out.st <= 1.0 and 0.0 < out.si < 1.0
    assert out.parts["clarity"] > 0
    assert out.sv == pytest.approx((out.parts["clarity"] + out.parts["necessity"]) / 2)
    text_only = sc.Scorers().score(Sample.from_question("b", "What is 2+3?", answer="5"))
    assert text_only.parts["clarity"] == 0.0 and text_only.sv == 0.0


@pytest.mark.parametrize("reply,expected", [
    ("7", 0.7), ("**Score: 8**", 0.8), ('{"score": 3}', 0.3), ("I'd say 6/10.", 0.6),
    ("85 out of 100", 0.85), ("rating = 10", 1.0), ("2024", None), ("no idea", None), (None, None), ("-3", None),
])
def test_parse_score(reply, expected) -> None:
    got = sc.parse_score(reply)
    assert got == (pytest.approx(expected) if expected is not None else None)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        if "requires looking at the image" in prompt:
            reply = "Score: 8"
        elif "reasoning exercise" in prompt:
            reply = "7/10"
        else:
            reply = "I cannot rate this."
        data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_judge_url():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_judge_scorers_through_a_local_endpoint_with_fallback(fake_judge_url, tmp_path) -> None:
    judge = Judge(fake_judge_url, "fake", cache_dir=tmp_path / "cache", retries=0)
    scorers = sc.Scorers("judge", "judge", "judge", judge=judge)
    s = Sample.from_question("a", "Why is the red circle left of the square?", images=[checkerboard(64)],
                             answer="x")
    out = scorers.score(s)
    assert out.parts["necessity"] == pytest.approx(0.8)
    assert out.st == pytest.approx(0.7)
    assert out.si == pytest.approx(sc.integration(sc.question_text(s)))  # unparseable -> heuristic
    assert scorers.fallbacks == {"integration": 1}
    assert judge.requests == 3
    scorers.score(s)  # cached: no new requests
    assert judge.requests == 3


def test_unreachable_judge_falls_back_and_counts(tmp_path) -> None:
    judge = Judge("http://127.0.0.1:9/v1", "fake", cache_dir=tmp_path, retries=0, timeout_s=2)
    scorers = sc.Scorers(text="judge", judge=judge)
    s = Sample.from_question("a", "If 3 apples then 2 more, how many in total?", answer="5")
    assert scorers.score(s).st == pytest.approx(sc.text_score(sc.question_text(s)))
    assert scorers.fallbacks == {"text": 1}
    with pytest.raises(ValueError, match="judge"):
        sc.Scorers(vision="judge")
