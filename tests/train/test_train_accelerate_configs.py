"""The shipped accelerate configs load the way `accelerate launch` reads them and wrap the real layer classes."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _launch_env(name: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file NAME` gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if name.startswith("deepspeed"):
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_fsdp2_config_builds_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _launch_env("fsdp2.yaml")
    assert env["FSDP_VERSION"] == "2" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "true" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing is True
    assert plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]  # the ViT rides in the root unit
    assert plugin.reshard_after_forward is True and "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_deepspeed_zero3_config_reaches_the_launcher() -> None:
    env = _launch_env("deepspeed_zero3.yaml")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true" and env["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none"
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env  # the r1v train config owns accumulation


@pytest.mark.parametrize("name", ["fsdp2.yaml", "deepspeed_zero3.yaml"])
def test_one_node_of_8_gpus_in_bf16(name: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert (cfg.num_processes, cfg.num_machines, cfg.mixed_precision, cfg.use_cpu) == (8, 1, "bf16", False)


def test_wrapped_layer_classes_exist_in_the_model() -> None:
    from r1v.model.build import build_preset

    names = {type(m).__name__ for m in build_preset("tiny", device="meta").model.modules()}
    assert {"Qwen2DecoderLayer", "InternVLVisionLayer"} <= names
