"""Where an LLM's safety acts and whether it transfers to images: the logit lens and Algorithm 1, probes,
cosines and attention (`analysis`, CLI `analyze`), refusal judges and DSR (`judge`, CLI `evaluate`),
general-ability metrics (VQA, multiple choice, POPE) and the inputs both CLIs read (`eval_inputs`)."""
