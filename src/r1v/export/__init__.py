"""Export: write an r1v model in the formats other inference engines load.

- `gguf.py`: the LLM as a GGUF file plus the vision tower + connector as the multimodal projector file
  (`mmproj-*.gguf`) in llama.cpp's InternVL layout (`r1v convert DIR OUT --to gguf --type f16|q8_0|q4_0`).
- `compressed.py`: a transformers folder with weight-only int8/int4 linears in the compressed-tensors format,
  which vLLM serves quantised (`r1v convert DIR OUT --to compressed-tensors --type int8|int4`).
"""
