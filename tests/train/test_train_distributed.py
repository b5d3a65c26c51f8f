"""Data-parallel training on 2 CPU processes (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from numerics import assert_close_scaled, assert_same_update  # noqa: E402
from tiny_run import TinyLM, run  # noqa: E402

pytestmark = pytest.mark.numerics  # float tolerances: `make test-portable` reruns these

SCRIPT = Path(__file__).parent / "tiny_run.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--steps", "5", "--save-every", "0", "--dropout", "0"]
    # 2 processes x micro-batch 1 x accumulation 2 == 1 process x micro-batch 4: global batch 4 both ways
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT),
                            str(tmp_path / "two"), "--micro", "1", "--accum", "2", *common],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    run(tmp_path / "one", steps=5, save_every=0, dropout=0.0, micro=4)  # one process, in this one meanwhile
    out_two, _ = two.communicate(timeout=240)
    assert two.returncode == 0, out_two[-3000:]
    rows = {k: [json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()] for k in ("one", "two")}
    assert len(rows["one"]) == len(rows["two"]) == 5
    for a, b in zip(rows["one"], rows["two"], strict=True):
        assert a["units"] == b["units"]  # the same samples form each global batch
        assert_close_scaled(b["sft"], a["sft"], msg="loss")
        assert_close_scaled(b["grad_norm"], a["grad_norm"], msg="grad_norm")
    losses = [r["sft"] for r in rows["one"]]
    assert len(set(losses)) == 5  # real, changing losses
    wa, wb = load_file(str(tmp_path / "one" / "final.safetensors")), load_file(str(tmp_path / "two" / "final.safetensors"))
    start = TinyLM(0.0).state_dict()  # what both runs started from (run() builds the same model)
    assert assert_same_update(wb, wa, start) > 1e-3


FSDP_SCRIPT = Path(__file__).parent / "fsdp_run.py"


def test_fsdp2_checkpoint_exports_a_loadable_model_equal_to_one_process(tmp_path: Path) -> None:
    """2 gloo processes with FSDP2 (DTensor parameters) train the tiny VLM 2 steps and checkpoint: the exported
    folder is gathered, written once, loads with load_vlm and equals the 1-process run's."""
    import warnings

    from r1v.model.build import build_preset, load_vlm

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(FSDP_SCRIPT),
                          str(tmp_path / "two"), "--micro", "2", "--shard"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    one = subprocess.run([sys.executable, str(FSDP_SCRIPT), str(tmp_path / "one"), "--micro", "4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, (one.stdout + one.stderr)[-3000:]
    info = {k: json.loads((tmp_path / k / "info.json").read_text()) for k in ("one", "two")}
    assert info["two"]["sharded"] and info["two"]["world"] == 2 and not info["one"]["sharded"]
    assert_close_scaled(info["two"]["loss"], info["one"]["loss"], msg="loss")
    ckpt = tmp_path / "two" / "checkpoints" / "step-00000002"
    assert (ckpt / "optimizer-rank0.pt").exists() and (ckpt / "optimizer-rank1.pt").exists()
    assert not list((tmp_path / "two" / "checkpoints").glob(".tmp-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = build_preset("tiny").model.state_dict()
        a = load_vlm(tmp_path / "one" / "checkpoints" / "step-00000002" / "model").model.state_dict()
        b = load_vlm(ckpt / "model").model.state_dict()
    assert set(a) == set(b)
    assert assert_same_update(b, a, start) > 1e-4  # the runs really trained, the same way
    trainable = load_file(str(ckpt / "trainable.safetensors"))
    torch.testing.assert_close(trainable["lm_head.weight"], b["lm_head.weight"])
