"""MPO and iterative SFT on 2 gloo processes against 1: every prompt of a generation pass handled by exactly
one process (the same completions), and the final weights equal up to float reordering (DDP with precomputed
reference log-probs, and FSDP2's `fully_shard` with the frozen reference sharded too)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from numerics import assert_same_update
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "mpo_run.py"
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


def _both(tmp_path: Path, *args: str, two: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """The same run on 2 processes (grad_accum 1) and, meanwhile, on 1 (grad_accum 2): the same global batch."""
    one, two_out = tmp_path / "one", tmp_path / "two"
    proc = subprocess.Popen(_cmd(two_out, 2, *args, *two), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    done = subprocess.run(_cmd(one, 1, *args, "--grad-accum", "2"), capture_output=True, text=True, env=ENV,
                          timeout=900)
    log, _ = proc.communicate(timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert proc.returncode == 0, log[-4000:]
    return one, two_out


def _generated(out: Path) -> list[list[dict]]:
    """Per process: the samples it generated for (in call order), with their completions."""
    return [[json.loads(x) for x in f.read_text().splitlines()] for f in sorted(out.glob("generated-rank*.jsonl"))]


@pytest.fixture(scope="module")
def start() -> dict[str, torch.Tensor]:
    import warnings

    from r1v.model.build import build_preset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: v.detach().clone() for k, v in build_preset("tiny").model.named_parameters()}


def _same_weights(one: Path, two: Path, start: dict[str, torch.Tensor]) -> None:
    wa, wb = load_file(str(one / "final_weights.safetensors")), load_file(str(two / "final_weights.safetensors"))
    assert assert_same_update(wb, wa, start) > 1e-4  # trained, the same way


def test_mpo_pair_generation_splits_the_prompts_and_samples_as_one(tmp_path: Path) -> None:
    one, two = _both(tmp_path, "pairs")
    (whole,), parts = _generated(one), _generated(two)
    assert len(parts) == 2 and all(parts)
    ids = [[r["id"] for r in p] for p in parts]
    assert not set(ids[0]) & set(ids[1]) and ids[0] + ids[1] == [r["id"] for r in whole]  # each prompt once
    assert [r["texts"] for p in parts for r in p] == [r["texts"] for r in whole]  # the same completions
    assert json.loads((one / "counts.json").read_text()) == json.loads((two / "counts.json").read_text())


@pytest.mark.parametrize(("reference", "fsdp"), [("precompute", False), ("frozen", True)])
def test_mpo_on_two_processes_trains_as_one(tmp_path: Path, start, reference: str, fsdp: bool) -> None:
    one, two = _both(tmp_path, "mpo", "--reference", reference, two=("--fsdp",) if fsdp else ())
    a = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["units"] for r in a] == [r["units"] for r in b] == [4.0, 4.0, 4.0]
    for ra, rb in zip(a, b, strict=True):
        assert rb["mpo"] == pytest.approx(ra["mpo"], rel=1e-3)
    _same_weights(one, two, start)


def test_iterative_sft_on_two_processes_judges_each_item_once_and_trains_as_one(tmp_path: Path, start) -> None:
    one, two = _both(tmp_path, "iterative-sft")
    (whole,), parts = _generated(one), _generated(two)
    assert len(parts) == 2 and len(parts[0]) + len(parts[1]) == len(whole)  # every judge pass split in two
    ids = [r["id"] for r in whole]
    assert sorted(r["id"] for p in parts for r in p) == sorted(ids)
    assert sorted(json.dumps(r) for p in parts for r in p) == sorted(json.dumps(r) for r in whole)
    _same_weights(one, two, start)
