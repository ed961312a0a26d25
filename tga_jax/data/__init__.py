"""Host-side data: tokenisers (HF folders, GGUF without torch), conversation templates with named spans,
CLIP/LLaVA image preprocessing, LVLM batches, LLaVA JSON -> tfds, and procedural image-caption scenes."""
