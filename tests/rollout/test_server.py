"""The rollout server (`r1v rollout-server`, vLLM's CPU build) and its client `RemoteEngine`: the same completions
as our engine, clear errors, and GRPO on 2 trainer processes (gloo) rolling out on the server and pushing weights
after each step, the server's greedy output at the end equal to the trained model's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from r1v.data.schema import Sample
from r1v.errors import ConfigError
from r1v.model.build import build_preset
from r1v.rollout.engine import SamplingParams, TransformersEngine
from r1v.rollout.server import RemoteEngine, sample_from_json, sample_to_json

TRAINER = Path(__file__).parent / "server_trainer.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_samples_travel_as_json() -> None:
    s = Sample.from_question("a", "What is 2+2?", images=["x.png"], answer="4", system="Be brief.", source="k12")
    assert sample_from_json(json.loads(json.dumps(sample_to_json(s)))) == s
    from PIL import Image

    with pytest.raises(ConfigError, match="file paths"):
        sample_to_json(Sample.from_question("b", "What?", images=[Image.new("RGB", (4, 4))]))


def test_no_server_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="no rollout server"):
        RemoteEngine(f"http://127.0.0.1:{_port()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "r1v.cli", "rollout-server", "--model", "tiny64", "--port", str(port),
           "--text-only", "--dtype", "float32", "--kv-cache-gib", "0.25", "--max-model-len", "256", "--enforce-eager"]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            RemoteEngine(url, wait_s=400)
        except ConfigError:
            pytest.fail(f"the rollout server did not start:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.vllm
def test_remote_engine_matches_ours_and_reports_bad_requests(server) -> None:
    remote = RemoteEngine(server)
    assert remote.text_only
    samples = [Sample.from_question(f"q{i}", f"What is {i} + 1?") for i in range(3)]
    params = SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0, max_think_tokens=4)
    got = remote.generate(samples, params, seeds=[1, 2, 3])
    want = TransformersEngine(build_preset("tiny64")).generate(samples, params)
    for g, w in zip(got, want, strict=True):
        assert (g[0].token_ids, g[0].text, g[0].think, g[0].answer) == (w[0].token_ids, w[0].text, w[0].think,
                                                                          w[0].answer)
    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, repetition_penalty=1.0, n=2)
    assert ([c.token_ids for g in remote.generate(samples, sampled, seeds=[5, 6, 7]) for c in g]
            == [c.token_ids for g in remote.generate(samples, sampled, seeds=[5, 6, 7]) for c in g])
    with pytest.raises(ConfigError, match="max_new_tokens"):
        remote.generate(samples, SamplingParams(max_new_tokens=0))


@pytest.mark.vllm
def test_grpo_on_two_trainer_processes_with_the_rollout_server(server, tmp_path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_port()), str(TRAINER), str(tmp_path), server]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    greedy = json.loads((tmp_path / "greedy.json").read_text())
    assert greedy["world"] == 2 and greedy["server"] == greedy["ours"]
