"""Safety transfer in miniature (issue 10): a procedural world of toxic and benign concepts, a small
contrastively pretrained vision tower, a text-safety-tuned SmolLM2, and LLaVA-style alignment with
and without Text-Guided Alignment, all runnable offline on a 2-core CPU (`make reproduce`)."""
