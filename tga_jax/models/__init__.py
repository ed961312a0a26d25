"""Pure Linen modules: the LLaMA-family decoder, CLIP/SigLIP vision towers, projectors and the LLaVA-style
LVLM that joins them. No file I/O, no tokenisers: params are plain pytrees (see tga_jax/weights)."""
