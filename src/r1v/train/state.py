"""Training state and atomic checkpoints that a killed run resumes from exactly.

A checkpoint is a folder `OUT/checkpoints/step-00000012/`:

    trainable.safetensors   trainable weights (what resume loads; frozen parts come from the base model)
    model/                  optional full model folder written by the stage's `export_fn` (hand-off)
    optimizer.pt            optimiser state (`optimizer-rank{r}.pt` per process when it is sharded)
    scheduler.pt            lr scheduler state
    rng/rank-{r}.pt         python, numpy, torch (and cuda) RNG states of every process
    extra.pt                the stage's `extra` dict (e.g. a running mean), saved with torch.save
    state.json              step, epoch, position in the epoch, sampler seed, samples seen

Atomicity: everything is written into `checkpoints/.tmp-step-...` beside the final folder and then
moved into place with `os.replace`, so a run killed mid-save leaves either the previous checkpoints or
the new one, never a half-written one. `latest_checkpoint` ignores temporary folders.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from r1v.errors import OutputError, R1VError, one_line

CHECKPOINTS = "checkpoints"
PREFIX = "step-"


@dataclass
class TrainState:
    """Where a run is: optimiser steps done, data position and the stage's own `extra` state."""

    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    step_in_epoch: int = 0
    """Optimiser steps done inside `epoch` (the data position)."""
    data_seed: int = 0
    """The sampler order of epoch e is a permutation seeded by data_seed + e."""
    samples_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `out_dir/checkpoints`, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns the deleted folders."""
    found = list_checkpoints(out_dir)
    doomed = found[:-keep_last] if keep_last > 0 else found
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def capture_rng() -> dict[str, Any]:
    """The RNG states of this process."""
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _rank_world(accelerator: Any) -> tuple[int, int]:
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def _barrier(accelerator: Any) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of `model` is a DTensor (FSDP2's `fully_shard`, under accelerate or directly)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _optimizer_is_sharded(accelerator: Any, model: nn.Module) -> bool:
    if is_sharded(model):
        return True
    if accelerator is None:
        return False
    return str(accelerator.distributed_type) in ("DistributedType.FSDP", "DistributedType.DEEPSPEED", "FSDP",
                                                 "DEEPSPEED")


def full_state_dict(model: nn.Module, accelerator: Any = None) -> dict[str, torch.Tensor]:
    """The whole model's state dict as plain tensors; every process must call it.

    A sharded (DTensor) model is gathered with `get_model_state_dict(full_state_dict=True, cpu_offload=True)`,
    which hands the full dict to rank 0 only (other ranks get an empty dict); otherwise accelerate's
    `get_state_dict` (which also gathers DeepSpeed ZeRO-3 and FSDP1), or the plain `state_dict()`.
    """
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return accelerator.get_state_dict(model) if accelerator is not None else model.state_dict()


def unsharded_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (non-DTensor) module of `model`'s class holding the gathered `state`, for export.

    Built from `model.config` on the meta device, then given `state`'s tensors; only transformers models
    (anything with a `config`) can be rebuilt this way.
    """
    from torch.distributed.fsdp import FSDPModule

    config = getattr(model, "config", None)
    if config is None:
        raise R1VError(f"cannot export a sharded {type(model).__name__}: only models with a `config` "
                       "(transformers models) can be rebuilt unsharded")
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls(config)
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if name not in _tied(plain)]  # a tied copy may be left out
    if unexpected or missing:
        raise R1VError(f"gathered state does not fit {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    return plain.eval()


def _tied(model: nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier-named parameter (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied


def _local_optimizer_state(state: dict) -> dict:
    """An optimiser state dict with every DTensor replaced by this process's local shard."""
    return {**state, "state": {i: {k: v.to_local() if hasattr(v, "to_local") else v for k, v in s.items()}
                               for i, s in state["state"].items()}}


def _sharded_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """The inverse of `_local_optimizer_state`: local shards wrapped as DTensors laid out like their parameters."""
    from torch.distributed.tensor import DTensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    out = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        out[i] = {k: DTensor.from_local(v, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                        stride=p.stride())
                  if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.dim() > 0 else v
                  for k, v in s.items()}
    return {**state, "state": out}


def save_checkpoint(out_dir: str | Path, state: TrainState, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, accelerator: Any = None,
                    export_fn: Callable[[nn.Module, Path], None] | None = None,
                    keep_last: int = 2, config: dict | None = None) -> Path:
    """Write a checkpoint for `state` atomically; every process must call it. Returns the final folder.

    A write that fails (a full disk, a read-only folder) deletes the temporary folder and raises an
    `OutputError` that names the checkpoint and the one that stays the newest; nothing already saved is touched.
    """
    rank, _ = _rank_world(accelerator)
    root = Path(out_dir) / CHECKPOINTS
    final = root / checkpoint_name(state.step)
    tmp = root / f".tmp-{final.name}"
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover from a run killed while saving
            (tmp / "rng").mkdir(parents=True)
        _barrier(accelerator)
        _write_checkpoint(tmp, state, rank, model=model, optimizer=optimizer, scheduler=scheduler,
                          accelerator=accelerator, export_fn=export_fn, config=config)
    except (OSError, _WriteFailed) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(out_dir)
        kept = f"the newest complete checkpoint stays {previous}" if previous else "no earlier checkpoint exists"
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OutputError(f"{final}: cannot write the checkpoint ({why}); {kept}; free space or change "
                          "out_dir, then resume") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier(accelerator)

    if rank == 0:
        old = None
        if final.exists():  # re-saving the same step: move the old copy aside, then drop it
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        prune_checkpoints(out_dir, keep_last)
    _barrier(accelerator)
    return final


class _WriteFailed(Exception):
    """A checkpoint file could not be written (the libraries' own errors, read as a reason)."""


def _writing(path: Path, write: Callable[[], Any]) -> None:
    """Run `write` (which writes `path`); torch's and safetensors' write errors become `_WriteFailed`.

    torch reports a full disk as a RuntimeError from its zip writer ("unexpected pos ..."), so the free
    space left is read to say what happened.
    """
    try:
        write()
    except R1VError:
        raise
    except Exception as e:  # noqa: BLE001 - RuntimeError (torch), SafetensorError, OSError
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
        if free is not None and free < 1 << 20:
            raise _WriteFailed(f"No space left on device: {free} bytes free while writing {path.name}") from None
        raise _WriteFailed(f"{path.name}: {one_line(e)}") from None


def _write_checkpoint(tmp: Path, state: TrainState, rank: int, *, model: nn.Module,
                      optimizer: torch.optim.Optimizer, scheduler: Any, accelerator: Any,
                      export_fn: Callable[[nn.Module, Path], None] | None, config: dict | None) -> None:
    """Every file of a checkpoint into the temporary folder `tmp` (this process's part)."""
    from safetensors.torch import save_file

    bare = accelerator.unwrap_model(model) if accelerator is not None else model
    names = set(trainable_names(bare))
    sharded = is_sharded(bare)
    full = full_state_dict(model, accelerator)  # gathered on every process; rank 0 holds it
    if rank == 0:
        weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in full.items() if k in names}
        _writing(tmp / "trainable.safetensors", lambda: save_file(weights, str(tmp / "trainable.safetensors")))
        if export_fn is not None:  # a sharded model is exported from an unsharded copy of the gathered state
            with torch.random.fork_rng(devices=[]):  # exporting must not move the RNG a resumed run restores
                plain = unsharded_copy(bare, full) if sharded else bare
                _writing(tmp / "model", lambda: export_fn(plain, tmp / "model"))
        _save(scheduler.state_dict(), tmp / "scheduler.pt")
        payload = {k: v for k, v in asdict(state).items() if k != "extra"}
        (tmp / "state.json").write_text(json.dumps(payload, indent=2) + "\n")
        _save(state.extra, tmp / "extra.pt")
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    if sharded:  # this process's shards as plain tensors (a pickled DTensor drags its device mesh along)
        _save(_local_optimizer_state(optimizer.state_dict()), tmp / f"optimizer-rank{rank}.pt")
    elif _optimizer_is_sharded(accelerator, bare):
        _save(optimizer.state_dict(), tmp / f"optimizer-rank{rank}.pt")
    elif rank == 0:
        _save(optimizer.state_dict(), tmp / "optimizer.pt")
    _save(capture_rng(), tmp / "rng" / f"rank-{rank}.pt")


def _save(obj: Any, path: Path) -> None:
    _writing(path, lambda: torch.save(obj, path))


def _corrupt(path: Path, e: Exception) -> R1VError:
    return R1VError(f"{path}: corrupt or truncated checkpoint file ({type(e).__name__}: {e}); delete the "
                    f"checkpoint folder {path.parent.name} to resume from an earlier one")


def _torch_file(path: Path, map_location: str | None = None) -> Any:
    """`torch.load` of one checkpoint file; a missing or damaged file is an R1VError naming it."""
    if not path.is_file():
        raise R1VError(f"{path}: missing from the checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle/zip/EOF errors of a damaged file have many types
        raise _corrupt(path, e) from None


def read_state_json(path: Path) -> dict[str, Any]:
    """The `state.json` of checkpoint folder `path`, checked field by field against `TrainState`."""
    file = path / "state.json"
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise R1VError(f"{file}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(info, dict):
        raise R1VError(f"{file}: expected a JSON object, got {type(info).__name__}")
    known = {f for f in TrainState.__dataclass_fields__ if f != "extra"}
    unknown = sorted(set(info) - known)
    if unknown:
        raise R1VError(f"{file}: unknown field(s) {unknown}; known: {sorted(known)}")
    for name, value in info.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise R1VError(f"{file}: field {name!r} must be a non-negative integer, got {value!r}")
    return info


def read_extra(path: str | Path) -> dict[str, Any]:
    """The stage's `extra` dict saved in checkpoint folder `path` ({} when it has none); a damaged
    `extra.pt` is an R1VError naming it."""
    file = Path(path) / "extra.pt"
    if not file.exists():
        return {}
    extra = _torch_file(file)
    if not isinstance(extra, dict):
        raise R1VError(f"{file}: expected a dict, got {type(extra).__name__}")
    return extra


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, accelerator: Any = None) -> TrainState:
    """Load a checkpoint into `model` (trainable weights), optimiser, scheduler and this process's RNG.

    Weights are copied in place into the existing parameters, so call it after `accelerator.prepare`.
    The world size must match the one that wrote the checkpoint when RNG or optimiser state is per process.
    Every file is read and checked (names, shapes, JSON fields) before anything is changed, so a damaged
    checkpoint raises an `R1VError` naming the file and leaves the model and optimiser as they were.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").exists():
        raise R1VError(f"{path}: not a complete checkpoint (no state.json)")
    rank, world = _rank_world(accelerator)
    bare = accelerator.unwrap_model(model) if accelerator is not None else model
    info = read_state_json(path)
    weights_file = path / "trainable.safetensors"
    if not weights_file.is_file():
        raise R1VError(f"{weights_file}: missing from the checkpoint")
    try:
        weights = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(weights_file, e) from None
    params = dict(bare.named_parameters())
    expected = set(trainable_names(bare))
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise R1VError(f"{weights_file}: trainable weights do not match the model's trainable parameters "
                       f"(missing {missing[:5]}, unexpected {unexpected[:5]}); was the policy changed?")
    for name, value in weights.items():
        shape = tuple(params[name].shape)  # a DTensor (FSDP2) reports its whole shape too
        if tuple(value.shape) != shape:
            raise R1VError(f"{weights_file}: tensor {name!r} has shape {tuple(value.shape)}, which does not match "
                           f"the model's {shape}; the checkpoint is from another model")
    saved_optimizer = None
    if optimizer is not None:
        sharded = path / f"optimizer-rank{rank}.pt"
        saved_optimizer = _torch_file(sharded if sharded.exists() else path / "optimizer.pt", "cpu")
    saved_scheduler = _torch_file(path / "scheduler.pt") if scheduler is not None else None
    rng = path / "rng" / f"rank-{rank}.pt"
    if not rng.exists():
        raise R1VError(f"{path}: no RNG state for process {rank}; resume with the same number of processes "
                       f"that wrote it (now {world})")
    rng_state = _torch_file(rng)
    extra = read_extra(path)

    with torch.no_grad():
        for name, value in weights.items():
            param = params[name]
            value = value.to(param.device, param.dtype)
            if hasattr(param, "device_mesh"):  # a DTensor shard (FSDP2): keep this process's part of the full value
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value, param.device_mesh, param.placements)
            param.copy_(value)
    if optimizer is not None:
        if is_sharded(bare):
            saved_optimizer = _sharded_optimizer_state(saved_optimizer, optimizer)
        try:
            optimizer.load_state_dict(saved_optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise R1VError(f"{path}: the optimiser state does not fit this run's optimiser ({e})") from None
    if scheduler is not None:
        try:
            scheduler.load_state_dict(saved_scheduler)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise R1VError(f"{path / 'scheduler.pt'}: does not fit this run's scheduler ({e})") from None
    try:
        restore_rng(rng_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise R1VError(f"{rng}: not an RNG state ({type(e).__name__}: {e})") from None
    return TrainState(**info, extra=extra)

