"""Model: presets with the released shapes, assembly from parts, LLM swap, trainable-part policies,
the released remote-code layout, quantised loading, and memory planning (training and inference). Built on
transformers' InternVL classes.

- `vlm.py`: the `VLM` bundle, `set_ps_version`, and the folder helpers `build` and `released` share.
- `build.py`: `build_preset`, `load_vlm`, `save_model`, `assemble`, `swap_llm`, `convert`.
- `presets.py`: `r1v-38b`, `r1v2-38b`, `r1v3-38b` (meta-buildable shapes), `tiny`, `smol`.
- `released.py`: Skywork-R1V*/InternVL-chat remote-code layout <-> transformers.
- `parts.py`: `POLICIES`, `apply_policy`, `part_of`, `count_params`, `apply_lora`.
- `trainable.py`: `build_trainable`, `apply_trainable`, `save_vlm`, `export_fn` (what the stages train).
- `inspect.py`: `inspect_target`, `render_inspect` (`r1v inspect`).
- `tokens.py`: the tiny offline tokenizer and `add_image_tokens`.
- `quantize.py`: `--quantize int8|int4` (bitsandbytes) for inference: `quantize_vlm`, `weight_bytes`.
"""
