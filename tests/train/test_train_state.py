"""Checkpoints: atomic writes, pruning, `extra` state, and exact resume of a run killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import collate, run, tiny_dataset, tiny_model  # noqa: E402

from r1v.errors import R1VError  # noqa: E402
from r1v.train import TrainConfig, sft_objective, train  # noqa: E402
from r1v.train.optim import build_optimizer, build_scheduler  # noqa: E402
from r1v.train.state import (  # noqa: E402
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

SCRIPT = Path(__file__).parent / "tiny_run.py"


def _parts(cfg: TrainConfig):
    model = tiny_model()
    opt = build_optimizer(model, cfg)
    return model, opt, build_scheduler(opt, cfg, 10)


def test_save_is_atomic_prunes_and_keeps_extra(tmp_path: Path) -> None:
    cfg = TrainConfig(device="cpu")
    model, opt, sched = _parts(cfg)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, TrainState(step=step, epoch=1, step_in_epoch=step, extra={"delta": 0.25 * step}),
                        model=model, optimizer=opt, scheduler=sched, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    # a run killed mid-save leaves a temporary folder: it is never taken for a checkpoint
    junk = tmp_path / "checkpoints" / ".tmp-step-00000009"
    junk.mkdir()
    (junk / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    assert not list((tmp_path / "checkpoints").glob(".tmp-step-00000003"))
    fresh, opt2, sched2 = _parts(cfg)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    state = load_checkpoint(latest_checkpoint(tmp_path), model=fresh, optimizer=opt2, scheduler=sched2)
    assert state.step == 3 and state.step_in_epoch == 3 and state.extra == {"delta": 0.75}
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_holds_only_trainable_weights_and_checks_the_policy(tmp_path: Path) -> None:
    cfg = TrainConfig(device="cpu")
    model, opt, sched = _parts(cfg)
    model.model.embed_tokens.weight.requires_grad_(False)
    opt = build_optimizer(model, cfg)
    path = save_checkpoint(tmp_path, TrainState(step=1), model=model, optimizer=opt, scheduler=sched)
    names = set(load_file(str(path / "trainable.safetensors")))
    assert "model.embed_tokens.weight" not in names and "lm_head.weight" in names
    other = tiny_model()  # everything trainable: the saved set no longer matches
    with pytest.raises(R1VError, match="policy"):
        load_checkpoint(path, model=other)


def _run(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--steps", "10", "--save-every", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_sigkill_then_resume_gives_identical_weights(tmp_path: Path) -> None:
    """Kill a real run with SIGKILL after its 2nd checkpoint; the resumed run ends bit-identical."""
    victim = _run(tmp_path / "victim", "--sleep", "0.4")
    run(tmp_path / "ref", steps=10, save_every=2)  # the uninterrupted run, in this process meanwhile
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = latest_checkpoint(tmp_path / "victim")
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= 4:
            break
        assert victim.poll() is None, victim.stdout.read()
        time.sleep(0.05)
    else:
        pytest.fail("the run wrote no checkpoint in time")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = int(latest_checkpoint(tmp_path / "victim").name.split("-")[1])
    assert killed_at < 10 and not (tmp_path / "victim" / "final.safetensors").exists()
    resumed = _run(tmp_path / "victim", "--resume")
    out_resumed, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out_resumed
    a = load_file(str(tmp_path / "ref" / "final.safetensors"))
    b = load_file(str(tmp_path / "victim" / "final.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the stage's `extra` (a running sum of losses) survived the kill exactly
    assert (tmp_path / "ref" / "final_extra.txt").read_text() == (tmp_path / "victim" / "final_extra.txt").read_text()
    rows = (tmp_path / "victim" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 10  # steps logged after the last checkpoint by the killed run were dropped


def test_resume_with_no_checkpoint_starts_fresh(tmp_path: Path) -> None:
    cfg = TrainConfig(device="cpu", max_steps=2, resume=True, out_dir=tmp_path, report_to=["jsonl"],
                      progress=False, plots=False)
    res = train(tiny_model(), tiny_dataset(8), sft_objective(), cfg, collate_fn=collate)
    assert res.resumed_from is None and res.state.step == 2
    cfg.max_steps = 4
    res = train(tiny_model(), tiny_dataset(8), sft_objective(), cfg, collate_fn=collate)
    assert res.resumed_from is not None and res.resumed_from.name == "step-00000002" and res.state.step == 4


@pytest.mark.parametrize("damage", ["optimizer", "weights_shape", "state_json"])
def test_a_damaged_checkpoint_is_refused_before_anything_changes(tmp_path: Path, damage: str) -> None:
    """Every file is checked before the model is touched: a bad checkpoint leaves the weights as they were."""
    from safetensors.torch import save_file

    cfg = TrainConfig(device="cpu")
    model, opt, sched = _parts(cfg)
    ckpt = save_checkpoint(tmp_path, TrainState(step=1), model=model, optimizer=opt, scheduler=sched)
    if damage == "optimizer":
        (ckpt / "optimizer.pt").write_bytes((ckpt / "optimizer.pt").read_bytes()[:40])
        pattern = "optimizer.pt: corrupt or truncated"
    elif damage == "weights_shape":
        weights = load_file(str(ckpt / "trainable.safetensors"))
        weights = {k: v.flatten()[:1].clone() for k, v in weights.items()}
        save_file(weights, str(ckpt / "trainable.safetensors"))
        pattern = "trainable.safetensors: tensor .* has shape"
    else:
        (ckpt / "state.json").write_text('{"step": -1}')
        pattern = "state.json: field 'step' must be a non-negative integer"
    fresh, opt2, sched2 = _parts(cfg)
    before = [p.detach().clone() for p in fresh.parameters()]
    with pytest.raises(R1VError, match=pattern):
        load_checkpoint(ckpt, model=fresh, optimizer=opt2, scheduler=sched2)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))


def _disk_full_at(monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """Make the write of checkpoint file `which` fail the way it fails on a full disk, with the error type
    its library really raises there (measured on a 64 KiB tmpfs): SafetensorError, torch's RuntimeError
    from its zip writer, or OSError ENOSPC for plain files."""
    import errno
    import shutil

    import safetensors.torch

    import r1v.train.state as state_mod

    real_torch_save, real_st_save, real_write_text = torch.save, safetensors.torch.save_file, Path.write_text

    def torch_save(obj, f, *a, **k):
        if which == Path(f).name:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_torch_save(obj, f, *a, **k)

    def st_save(tensors, filename, *a, **k):
        if which == Path(filename).name:
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_st_save(tensors, filename, *a, **k)

    def write_text(self, *a, **k):
        if which == self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(safetensors.torch, "save_file", st_save)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(state_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))


@pytest.mark.parametrize("which", ["trainable.safetensors", "optimizer.pt", "state.json", "rank-0.pt"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               which: str) -> None:
    from r1v.errors import OutputError

    cfg = TrainConfig(device="cpu")
    model, opt, sched = _parts(cfg)
    first = save_checkpoint(tmp_path, TrainState(step=1, step_in_epoch=1), model=model, optimizer=opt,
                            scheduler=sched, keep_last=1)
    saved = {k: v.clone() for k, v in load_file(str(first / "trainable.safetensors")).items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    with monkeypatch.context() as m:
        _disk_full_at(m, which)
        with pytest.raises(OutputError) as err:
            save_checkpoint(tmp_path, TrainState(step=2, step_in_epoch=2), model=model, optimizer=opt,
                            scheduler=sched, keep_last=1)
    message = str(err.value)
    assert "step-00000002: cannot write the checkpoint" in message and "No space left on device" in message
    assert f"stays {first}" in message and "resume" in message
    # nothing half-written is left, and the previous checkpoint is still the newest, whole and loadable
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]
    assert latest_checkpoint(tmp_path) == first
    fresh, opt2, sched2 = _parts(cfg)
    assert load_checkpoint(first, model=fresh, optimizer=opt2, scheduler=sched2).step == 1
    for name, p in fresh.named_parameters():
        assert torch.equal(p, saved[name])


def test_a_full_disk_on_a_real_small_filesystem(tmp_path: Path) -> None:
    """The same on a real full disk: a 1 MiB tmpfs holding the first checkpoint of the tiny model and a
    filler file that leaves room for half of a second one. Needs a machine where the test may mount a tmpfs
    (root); elsewhere the simulated test above stands in for it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    from r1v.errors import OutputError

    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    try:
        cfg = TrainConfig(device="cpu")
        model, opt, sched = _parts(cfg)
        first = save_checkpoint(disk, TrainState(step=1), model=model, optimizer=opt, scheduler=sched, keep_last=5)
        used = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
        filler = disk / "filler.bin"  # leave less room than a second checkpoint needs
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * max(0, free - used // 2))
        with pytest.raises(OutputError, match="No space left on device"):
            save_checkpoint(disk, TrainState(step=2), model=model, optimizer=opt, scheduler=sched, keep_last=5)
        assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == ["step-00000001"]
        fresh, opt2, sched2 = _parts(cfg)
        assert load_checkpoint(first, model=fresh, optimizer=opt2, scheduler=sched2).step == 1
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_stops_r1v_train_with_one_line_and_resume_finishes_the_run(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`r1v train sft` whose second save hits a full disk: exit 2, one `error:` line naming the checkpoint,
    the first checkpoint kept; rerun with train.resume=true (disk freed) ends with the uninterrupted run's weights."""
    from typer.testing import CliRunner

    from r1v.cli import app

    configs = Path(__file__).resolve().parents[2] / "configs"
    args = ["train", "sft", "--config", str(configs / "sft.yaml"), "data=synthetic:16", "eval_data=null",
            "train.max_steps=4", "train.save_every=2", "train.micro_batch_size=2", "train.progress=false",
            "train.plots=false", "train.report_to=[jsonl]", "train.device=cpu"]
    whole = CliRunner().invoke(app, [*args, f"train.out_dir={tmp_path / 'whole'}"])
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "full"
    real_save = torch.save

    def save(obj, f, *a, **k):
        if "step-00000004" in str(f) and Path(f).name == "optimizer.pt":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, f, *a, **k)

    import shutil

    import r1v.train.state as state_mod

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        m.setattr(state_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
        failed = CliRunner().invoke(app, [*args, f"train.out_dir={out}"])
    assert failed.exit_code == 2, failed.output
    lines = [x for x in failed.stderr.splitlines() if x.startswith("error")]
    assert failed.exception is None or isinstance(failed.exception, SystemExit)
    assert len(lines) == 1 and "step-00000004" in lines[0] and "Traceback" not in failed.output, failed.stderr
    assert "No space left on device" in lines[0] and "step-00000002" in lines[0]
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    resumed = CliRunner().invoke(app, [*args, f"train.out_dir={out}", "train.resume=true"])
    assert resumed.exit_code == 0, resumed.output
    a = load_file(str(next((tmp_path / "whole" / "final").rglob("*.safetensors"))))
    b = load_file(str(next((out / "final").rglob("*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
