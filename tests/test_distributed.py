"""`r1v.distributed`: balanced contiguous shards, and gather/broadcast/sum over 2 gloo processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from r1v.distributed import even_shard, gather, shard, shard_bounds, world_info
from r1v.errors import ConfigError

WORKER = """
import json, sys
import torch.distributed as dist
from r1v.distributed import all_sum, broadcast, ensure_process_group, gather, shard
rank, world = ensure_process_group()
items = list(range(7))
mine = shard(items, rank, world)
out = {"rank": rank, "world": world, "backend": str(dist.get_backend()), "mine": mine,
       "gathered": gather([x * 10 for x in mine]), "broadcast": broadcast({"from": rank}),
       "sum": all_sum([rank + 1, 0.5])}
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump(out, f)
"""


def test_shards_cover_every_item_once_in_order() -> None:
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [shard(list(range(n)), r, world) for r in range(world)]
            assert [x for p in parts for x in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard_bounds(7, 0, 2) == (0, 4) and shard_bounds(7, 1, 2) == (4, 7)
    with pytest.raises(ConfigError, match="outside a world"):
        shard_bounds(4, 2, 2)


def test_even_shard_names_the_setting_and_the_fix() -> None:
    assert even_shard(8, 2, "prompts_per_step") == 4
    with pytest.raises(ConfigError, match=r"prompts_per_step is 5, which does not split over 2 processes.*4 or 6"):
        even_shard(5, 2, "prompts_per_step")


def test_one_process_is_the_identity() -> None:
    assert world_info() == (0, 1)
    assert gather([1, 2]) == [1, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_gather_in_rank_order(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["mine"] for r in ranks] == [[0, 1, 2, 3], [4, 5, 6]]
    for r in ranks:
        assert r["world"] == 2, r["backend"]
        assert r["gathered"] == [0, 10, 20, 30, 40, 50, 60]
        assert r["broadcast"] == {"from": 0} and r["sum"] == [3.0, 1.0]
