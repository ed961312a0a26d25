"""Checkpoints <-> param trees: one safetensors reader, GGUF, a key table per model family (LLaMA, CLIP,
LLaVA), load/save entry points (`load_llm`, `load_lvlm`, `compose_lvlm`, `save_lvlm_hf`) and the model
names that ship inside installed packages."""
