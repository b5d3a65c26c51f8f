"""GRPO on 2 gloo processes against 1: every prompt rolled out by exactly one process, the same completions,
buffer draws and metrics, final weights equal up to float reordering (DDP, FSDP2 with the full, connector+LLM
and LoRA policies, beta > 0 and the buffer), and a SIGKILL-resume on 2 processes bit-identical."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from numerics import assert_same_update
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "grpo_run.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(out: Path, procs: int, *args: str) -> list[str]:
    launch = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                   str(procs), "--master_addr", "127.0.0.1", "--master_port",
                                                   str(_port())]
    return [*launch, str(SCRIPT), str(out), *args]


def _run(out: Path, procs: int, *args: str) -> None:
    done = subprocess.run(_cmd(out, procs, *args), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _rolled_out(out: Path) -> dict[int, list[list[int]]]:
    """Rollout batch -> the prompt indices each process rolled out in it."""
    seen: dict[int, list[list[int]]] = {}
    for rank_file in sorted(out.glob("rollouts-rank*.jsonl")):
        for line in rank_file.read_text().splitlines():
            row = json.loads(line)
            seen.setdefault(row["batch"], []).append(row["prompts"])
    return seen


@pytest.fixture(scope="module")
def start() -> dict[str, torch.Tensor]:
    import warnings

    from r1v.model.build import build_preset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: v.detach().clone() for k, v in build_preset("tiny").model.named_parameters()}


def _same_training(one: Path, two: Path, start: dict[str, torch.Tensor]) -> None:
    a, b = _metrics(one), _metrics(two)
    exact = ("reward", "effective_ratio", "effective_ratio_without", "completion_length", "units")
    assert [[r.get(k) for k in exact] for r in a] == [[r.get(k) for k in exact] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "kl_mean", "grad_norm", "entropy"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-6), key
    wa, wb = load_file(str(one / "final_weights.safetensors")), load_file(str(two / "final_weights.safetensors"))
    assert assert_same_update(wb, wa, start) > 1e-3  # trained, the same way


def test_two_processes_roll_out_each_prompt_once_and_train_as_one(tmp_path: Path, start) -> None:
    args = ("--ssb", "--beta", "0.1", "--steps", "4")
    two = subprocess.Popen(_cmd(tmp_path / "two", 2, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=ENV)
    _run(tmp_path / "one", 1, *args)
    log, _ = two.communicate(timeout=600)
    assert two.returncode == 0, log[-4000:]
    one_seen, two_seen = _rolled_out(tmp_path / "one"), _rolled_out(tmp_path / "two")
    assert sorted(one_seen) == sorted(two_seen) == [0, 1, 2, 3]
    for batch, (whole,) in one_seen.items():
        parts = two_seen[batch]
        assert len(parts) == 2 and all(len(p) == 2 for p in parts)  # prompts_per_step 4 over 2 processes
        assert sorted(parts[0] + parts[1]) == sorted(whole) and not set(parts[0]) & set(parts[1])
    assert any(r["ssb/from_buffer"] > 0 for r in _metrics(tmp_path / "two"))  # the buffer took part
    _same_training(tmp_path / "one", tmp_path / "two", start)


@pytest.mark.parametrize("policy", ["connector+llm", "lora"])
def test_fully_shard_on_two_processes_trains_as_one(tmp_path: Path, start, policy: str) -> None:
    """FSDP2 (`train.fsdp`): half the prompts carry an image, so a text-only micro-batch on one process meets
    an image on the other; the connector's zero-gradient tie and the whole-model forwards keep them in step."""
    args = ("--beta", "0.1", "--steps", "3", "--policy", policy)
    _run(tmp_path / "one", 1, *args)
    _run(tmp_path / "two", 2, "--fsdp", *args)
    _same_training(tmp_path / "one", tmp_path / "two", start)


def test_sigkill_and_resume_on_two_processes_is_bit_identical(tmp_path: Path) -> None:
    args = ("--ssb", "--steps", "6", "--save-every", "2")
    _run(tmp_path / "whole", 2, *args)
    victim = subprocess.Popen(_cmd(tmp_path / "killed", 2, *args), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not any(ckpt.glob("step-00000004")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    victim.wait()
    assert not (tmp_path / "killed" / "final").exists()
    _run(tmp_path / "killed", 2, *args, "--resume")
    a = load_file(str(tmp_path / "whole" / "final_weights.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final_weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("reward", "effective_ratio", "ssb/from_buffer", "loss")
    assert [[r[k] for k in keys] for r in _metrics(tmp_path / "whole")] == \
        [[r[k] for k in keys] for r in _metrics(tmp_path / "killed")]


def test_a_batch_that_does_not_split_stops_before_any_work(tmp_path: Path) -> None:
    done = subprocess.run(_cmd(tmp_path / "bad", 2, "--prompts-per-step", "3"), capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert done.returncode != 0
    assert "prompts_per_step is 3, which does not split over 2 processes" in done.stdout + done.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists() and not (tmp_path / "bad" / "metrics.jsonl").exists()
