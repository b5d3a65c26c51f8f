"""Kill a stage with SIGKILL at random moments, resume it, and compare with an uninterrupted run: bit-identical.

Every training stage and the pipeline run from the command line on the tiny preset, as a user runs them. For
each stage: one uninterrupted run (its wall time T), then runs killed at moments drawn uniformly from
(0.1 T, 0.95 T) by a seeded generator (the moments are printed), each resumed with the same command; the
final artefacts (every tensor of every `.safetensors` file under the output's `final/`, and the data files a
generating stage writes) must equal the uninterrupted run's exactly, and no half-written checkpoint may be
picked up (`.tmp-*` folders are never loaded).

The fast variant kills each stage once; `-m slow` runs three kills per stage, each resumed run killed again
before it finishes where the moment allows. On a shared machine the wall time changes from run to run: when
a fresh run finishes before its kill, it is started over with a moment drawn from its own duration.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
FAST = ["train.progress=false", "train.plots=false", "train.report_to=[jsonl]", "train.device=cpu"]

# stage -> (yaml, overrides with {out}, resume override, artefacts relative to {out})
STAGES: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "sft": ("sft.yaml", ["data=synthetic:24", "eval_data=null", "train.max_steps=6", "train.save_every=2",
                         "train.micro_batch_size=2", "train.grad_accum=2", "train.out_dir={out}", *FAST],
            ["train.resume=true"], ["final"]),
    "grpo": ("grpo.yaml", ["data=synthetic:8", "train.max_steps=6", "train.save_every=2", "num_generations=2",
                           "prompts_per_step=2", "max_completion_length=6", "train.out_dir={out}", *FAST],
             ["train.resume=true"], ["final"]),
    "mpo": ("mpo.yaml", ["data=synthetic:12", "train.max_steps=6", "train.save_every=2", "train.micro_batch_size=2",
                         "train.out_dir={out}", *FAST], ["train.resume=true"], ["final"]),
    "rm": ("rm.yaml", ["data=synthetic:16", "train.max_steps=6", "train.save_every=2", "train.micro_batch_size=2",
                       "train.out_dir={out}", *FAST], ["train.resume=true"], ["final"]),
    "iterative-sft": ("iterative_sft.yaml", ["data=synthetic:12", "rounds=2", "tau=[2,3]", "eval_data=null",
                                             "gen_max_new_tokens=4", "train.max_steps=3", "train.save_every=1",
                                             "train.out_dir={out}", *FAST], ["train.resume=true"], ["round_2"]),
    "connector-tune": ("connector_tune.yaml", ["data=synthetic:16", "train.max_steps=6", "train.save_every=2",
                                               "train.micro_batch_size=2", "train.out_dir={out}", *FAST],
                       ["train.resume=true"], ["final"]),
    "agent-sft": ("agent_sft.yaml", ["tasks=4", "rollouts_per_task=1", "image_size=224", "train.max_steps=4",
                                     "train.save_every=1", "train.micro_batch_size=2", "train.out_dir={out}", *FAST],
                  ["train.resume=true"], ["final"]),
    "distill": ("distill.yaml", ["data=synthetic:6", "generation.max_new_tokens=12", "generation.max_think_tokens=8",
                                 "teacher.max_new_tokens=12", "out={out}"], [], ["data.jsonl", "dropped.jsonl"]),
    "rejection-sample": ("rejection_sample.yaml", ["data=synthetic:6", "generation.max_new_tokens=12",
                                                   "generation.max_think_tokens=8", "out={out}"], [],
                         ["data.jsonl"]),
    "pipeline": ("demo.yaml", ["scale=tiny", "out_dir={out}"], ["resume=true"], ["grpo/final", "sft/final"]),
    # not a training stage: `r1v eval` (no config file) resumes from the items its run files hold
    "eval": ("", ["--model", "tiny", "--benchmark", "k12", "--data", "{data}/k12", "--limit", "8",
                  "--runs", "2", "--max-new-tokens", "6", "--max-tiles", "1", "--temperature", "0.6",
                  "--batch-size", "2", "--out", "{out}"], [],
             ["report.json", "report.md", "run_1.jsonl", "run_2.jsonl", "run_1.official.json"]),
}
FAST_KILLS = 1
SLOW_KILLS = 3


DATA: Path | None = None  # the shared benchmark data (the `shared_data` fixture's folder), for `r1v eval`


def command(stage: str, out: Path, resume: bool) -> list[str]:
    yaml, overrides, resume_args, _ = STAGES[stage]
    args = [o.format(out=out, data=DATA) for o in overrides] + (resume_args if resume else [])
    if not yaml:  # `r1v <stage> ARGS`, resumed by running the same command again
        return [sys.executable, "-m", "r1v.cli", stage, *args]
    return [sys.executable, "-m", "r1v.cli", "train", stage, "--config", str(CONFIGS / yaml), *args]


def run(stage: str, out: Path, resume: bool = False) -> float:
    started = time.perf_counter()
    done = subprocess.run(command(stage, out, resume), capture_output=True, text=True, env=ENV, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return time.perf_counter() - started


def killed_run(stage: str, out: Path, after_s: float, resume: bool) -> float | None:
    """Start the stage and SIGKILL its whole process group after `after_s`; None if it was killed, else the
    seconds it took to finish first."""
    started = time.perf_counter()
    proc = subprocess.Popen(command(stage, out, resume), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    try:
        proc.wait(timeout=after_s)
        return time.perf_counter() - started
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def artefacts(stage: str, out: Path) -> dict[str, object]:
    """Every tensor of the stage's final safetensors files, and the bytes of its data files."""
    found: dict[str, object] = {}
    for rel in STAGES[stage][3]:
        path = out / rel
        files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
        assert files, f"{stage}: nothing at {path}"
        for f in files:
            key = str(f.relative_to(out))
            found[key] = load_file(str(f)) if f.suffix == ".safetensors" else f.read_bytes()
    return found


def same(a: dict[str, object], b: dict[str, object]) -> list[str]:
    """The artefact names that differ (tensors compared element for element, bit-exact)."""
    diff = sorted(set(a) ^ set(b))
    for key in set(a) & set(b):
        x, y = a[key], b[key]
        if isinstance(x, dict):
            if set(x) != set(y) or any(not torch.equal(x[k], y[k]) for k in x):
                diff.append(key)
        elif x != y:
            diff.append(key)
    return diff


def chaos(stage: str, tmp: Path, kills: int, seed: int) -> list[float]:
    """The moments (s) the stage was killed at; asserts the resumed result equals the uninterrupted one."""
    rng = random.Random(f"{seed}-{stage}")
    whole = run(stage, tmp / "whole")
    reference = artefacts(stage, tmp / "whole")
    moments = []
    out = tmp / "killed"
    estimate = whole
    for _ in range(kills + 3):  # a few extra draws for moments that land after the run finished
        if len(moments) == kills:
            break
        at = rng.uniform(0.1, 0.95) * estimate
        took = killed_run(stage, out, at, resume=bool(moments))
        if took is None:
            moments.append(round(at, 2))
        elif not moments:  # the first run finished before its kill (the machine got faster): start over
            shutil.rmtree(out, ignore_errors=True)
            estimate = took
        else:  # a resumed run finished first: it is done, no later kill can land
            break
    run(stage, out, resume=True)
    differs = same(reference, artefacts(stage, out))
    print(f"chaos {stage}: uninterrupted {whole:.1f} s, killed at {moments} s (seed {seed}): "
          f"{'identical' if not differs else differs}")
    assert moments, f"{stage}: no kill landed before the run finished"
    assert not differs, f"{stage}: resumed run differs from the uninterrupted one in {differs} (kills at {moments})"
    return moments


def use_shared_data(stage: str, request: pytest.FixtureRequest) -> None:
    """`r1v eval` reads the shared benchmark data: take its folder from the `shared_data` fixture (which
    skips where the data is absent)."""
    global DATA
    if stage == "eval":
        DATA = request.getfixturevalue("shared_data")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_kill_at_a_random_moment_resumes_bit_identical(tmp_path: Path, stage: str, request) -> None:
    use_shared_data(stage, request)
    chaos(stage, tmp_path, FAST_KILLS, seed=int(os.environ.get("R1V_CHAOS_SEED", "0")))


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_three_kills_per_stage_resume_bit_identical(tmp_path: Path, stage: str, request) -> None:
    use_shared_data(stage, request)
    chaos(stage, tmp_path, SLOW_KILLS, seed=int(os.environ.get("R1V_CHAOS_SEED", "1")))
