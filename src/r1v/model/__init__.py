"""Model: presets with the released shapes, assembly from parts, LLM swap, trainable-part policies,
the released remote-code layout, and memory planning. Built on transformers' InternVL classes."""
