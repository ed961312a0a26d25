"""Ask an LLM, or an LVLM about an image, from the command line; the reply streams as it is generated.

    python -m tga_jax.chat --prompt "What is the capital of France?"            # SmolLM2-135M-Instruct
    python -m tga_jax.chat --model runs/tiny/tga/params --image cat.png --prompt "What is in this image?"
    python -m tga_jax.chat --prompt "Hi" --prompt "Tell me a joke" --temperature 0.7 --seed 1   # a batch

--model is an HF folder, a .gguf file or a known name (an LLM), or with --image an LVLM folder (llava-hf
layout, as `save_lvlm_hf` and `tga_jax.train` export it). The chat template of the tokenizer wraps
each prompt unless --no-chat.
"""
from __future__ import annotations

import argparse
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m tga_jax.chat", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="smollm2-135m-instruct",
                 help="HF folder, .gguf file or known model name; with --image, an LVLM folder "
                      "(default: %(default)s)")
  p.add_argument("--prompt", action="append", required=True, help="the question; repeat for a batch")
  p.add_argument("--image", default=None,
                 help="an image file (PNG, JPEG, ...) to ask the LVLM about; every prompt gets it (default: none)")
  p.add_argument("--tokenizer", default=None,
                 help="where the tokenizer is, when not in --model (default: --model)")
  p.add_argument("--template", default=None,
                 help="LVLM conversation template (tga_jax.data.conversation.TEMPLATES) (default: the "
                      "tokenizer's chat template if it has one, else vicuna_v1)")
  p.add_argument("--system", default=None, help="a system prompt (default: the template's own)")
  p.add_argument("--no-chat", action="store_true", help="LLM only: send the prompt as plain text, no chat template")
  p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: %(default)s)")
  p.add_argument("--temperature", type=float, default=0.0,
                 help="0 = greedy; > 0 samples (default: %(default)s)")
  p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens; 0 = off "
                 "(default: %(default)s)")
  p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
  p.add_argument("--stop", action="append", default=[], help="LLM only: a string that ends the reply; repeatable")
  p.add_argument("--dtype", default="float32", help="compute dtype: float32 or bfloat16 (default: %(default)s)")
  return p.parse_args(argv)


def _ask_lvlm(args, tokenizer) -> list[str]:
  import numpy as np
  from PIL import Image

  from tga_jax.data.conversation import IMAGE
  from tga_jax.generate import generate_lvlm
  from tga_jax.weights.lvlm import load_lvlm

  try:
    image = np.asarray(Image.open(args.image).convert("RGB"))
  except OSError as e:
    raise SystemExit(f"--image {args.image}: not a readable image ({e})") from e
  module, params = load_lvlm(args.model, dtype=args.dtype)
  template = args.template or ("chat_template" if getattr(tokenizer, "chat_template", None) else "vicuna_v1")
  conversations = [[{"role": "user", "content": f"{IMAGE}\n{prompt}"}] for prompt in args.prompt]
  return generate_lvlm(module, params, tokenizer, conversations, [[image]] * len(conversations), template,
                       args.max_new_tokens, system=args.system, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed)


def main(argv=None) -> None:
  args = parse_args(argv)
  from tga_jax.data.tokenizer import load_tokenizer
  from tga_jax.generate import generate
  from tga_jax.weights.llm import load_llm

  tokenizer = load_tokenizer(args.tokenizer or args.model)
  start = time.perf_counter()
  single = len(args.prompt) == 1
  if args.image:
    texts = _ask_lvlm(args, tokenizer)
    if single:
      print(texts[0])
  else:
    module, params = load_llm(args.model, dtype=args.dtype)

    def stream(row, text):
      if single:
        sys.stdout.write(text)
        sys.stdout.flush()

    texts = generate(module, params, tokenizer, args.prompt, args.max_new_tokens, chat=not args.no_chat,
                     system=args.system, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                     seed=args.seed, stop=args.stop, stream=stream)
    if single:
      sys.stdout.write("\n")
  if not single:
    for prompt, text in zip(args.prompt, texts):
      print(f"### {prompt}\n{text}\n")
  print(f"[{time.perf_counter() - start:.1f} s including loading and compilation]", file=sys.stderr)


if __name__ == "__main__":
  main()
