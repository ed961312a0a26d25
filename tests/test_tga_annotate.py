"""The annotate CLI on a procedural corpus with a tiny random CLIP: retrieved captions, leak guard,
an unreadable image counted and left out, recall against exact search reported."""
import json

import pytest

from comploss_jax.encoder_params import resolve_model_dir
from tga_jax import annotate
from tga_jax.data import procedural

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("clip")
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=32, eos_token_id=102),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2),
      projection_dim=16)
  transformers.CLIPModel(config).save_pretrained(folder)
  return str(folder)


def test_annotate_cli_on_procedural_data(tmp_path, clip_dir):
  records = procedural.make_records(30, seed=1, image_size=32)
  data = procedural.write_llava_dataset(str(tmp_path), records, stage=2)
  (tmp_path / "images" / f"{records[3]['id']}.png").write_bytes(b"not a png")
  out = tmp_path / "annotated.json"
  report = annotate.main([f"--data={data}", f"--clip={clip_dir}", f"--corpus={tmp_path / 'captions.jsonl'}",
                          f"--out={out}", f"--index={tmp_path / 'index'}", "--tokenizer=" +
                          resolve_model_dir("all-minilm-l6-v2")])
  assert report["annotated"] == 29 and report["unreadable_images"] == {"UnidentifiedImageError": 1}
  assert 0.0 <= report["recall@10_vs_exact"] <= 1.0 and report["index_exact"]
  annotated = json.load(open(out))
  captions = {r["caption"] for r in records}
  with_retrieval = [r for r in annotated if "retrieved_caption" in r]
  assert len(with_retrieval) == 29 and "retrieved_caption" not in annotated[3]
  for r in with_retrieval:
    # Either another caption of the corpus, or the record's own caption cut in half by the leak guard.
    own = r["image_caption"]
    assert r["retrieved_caption"] in captions - {own} or own.startswith(r["retrieved_caption"])
  assert (tmp_path / "index" / "index.json").exists()
  again = annotate.main([f"--data={data}", f"--clip={clip_dir}", f"--corpus={tmp_path / 'captions.jsonl'}",
                         f"--out={tmp_path / 'again.json'}", f"--index={tmp_path / 'index'}", "--tokenizer=" +
                         resolve_model_dir("all-minilm-l6-v2")])
  assert again["annotated"] == 29  # the saved index is reused
