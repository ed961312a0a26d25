"""The miniature world (renderer, held-out variants and phrasings) and its vision tower's pretraining."""
import json
import os

import jax
import numpy as np
import pytest

from tga_jax.models.clip import ClipConfig
from tga_jax.weights.clip import load_clip_vision, load_visual_projection, save_clip_vision
from tga_jax.miniature import vision_pretrain as vp
from tga_jax.miniature import world
from tga_jax.miniature.concepts import BY_ID, CONCEPTS


def test_every_concept_renders_at_any_size():
  assert len(world.CONCEPT_IDS) == 37 and set(world.CONCEPT_IDS) == set(BY_ID)
  rng = np.random.default_rng(0)
  for concept in CONCEPTS:
    for split in world.SPLITS:
      for size in (64, 32):
        sample = world.render(concept.id, rng, split, image_size=size)
        image = sample["image"]
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert image.std() > 5, f"{concept.id}: a flat image"
        assert sample["concept"] == concept.id and sample["toxic"] == concept.toxic
        assert BY_ID[concept.id].noun.split()[-1] in sample["caption"].lower()


def test_concepts_differ_on_the_same_variants():
  # Same seed, hence the same background, clutter and placement: only the drawn object differs.
  images = [world.render(c, np.random.default_rng(5))["image"] for c in world.CONCEPT_IDS]
  for i in range(len(images)):
    for j in range(i):
      assert np.abs(images[i].astype(int) - images[j]).sum() > 0, (world.CONCEPT_IDS[i], world.CONCEPT_IDS[j])


def test_make_split_is_deterministic_by_seed():
  a, b = world.make_split(2, "train", seed=3), world.make_split(2, "train", seed=3)
  assert [r["caption"] for r in a] == [r["caption"] for r in b]
  assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
  c = world.make_split(2, "train", seed=4)
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  assert len(a) == 2 * 37 and len({r["id"] for r in a}) == len(a)
  # A concept's renders do not depend on which other concepts are rendered.
  only = world.make_split(2, "train", seed=3, concepts=("knife",))
  assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(only, [r for r in a if r["concept"] == "knife"]))


def test_heldout_variants_and_phrasings_never_appear_in_train():
  train, heldout = world.make_split(20, "train", seed=0), world.make_split(10, "heldout", seed=0)
  assert all((r["palette"], r["background"]) not in world.HELDOUT_PAIRS for r in train)
  assert all((r["palette"], r["background"]) in world.HELDOUT_PAIRS for r in heldout)
  # Every palette and background is trained on; only their held-out combinations are new.
  assert {p for p, _ in world.TRAIN_PAIRS} == set(world.PALETTES)
  assert {b for _, b in world.TRAIN_PAIRS} == set(world.BACKGROUNDS)
  train_texts, heldout_texts = set(world.all_captions("train")), set(world.all_captions("heldout"))
  assert not train_texts & heldout_texts
  assert {r["caption"] for r in train} <= train_texts and {r["caption"] for r in heldout} <= heldout_texts
  canonical = {world.canonical_caption(c) for c in world.CONCEPT_IDS}
  assert len(canonical) == 37 and not canonical & (train_texts | heldout_texts)
  with pytest.raises(ValueError, match="split"):
    world.render("gun", np.random.default_rng(0), split="test")


# One tiny tower for every test here, so the jitted encoder compiles once for the whole file.
TINY = vp.PretrainConfig(steps=3, batch=8, hidden=32, layers=2, heads=2, image_size=32, eval_per_concept=1)


def _tiny_tower() -> ClipConfig:
  return vp.tower_config(TINY)


def test_save_load_round_trip(tmp_path):
  cfg = _tiny_tower()
  params = vp.init_params(cfg, jax.random.PRNGKey(1))
  save_clip_vision(str(tmp_path), cfg, params["tower"], np.asarray(params["projection"]), vp.processor(32))
  module, tower = load_clip_vision(str(tmp_path))
  assert module.config == cfg
  jax.tree.map(np.testing.assert_array_equal, tower, jax.tree.map(np.asarray, params["tower"]))
  np.testing.assert_array_equal(load_visual_projection(str(tmp_path)), params["projection"])
  with open(tmp_path / "config.json") as f:
    hf = json.load(f)
  assert hf["architectures"] == ["CLIPVisionModelWithProjection"] and hf["projection_dim"] == vp.EMBED_DIM
  images = np.stack([r["image"] for r in world.make_split(1, "heldout", image_size=32)[:5]])
  cfg2, loaded = vp.load_pretrained(str(tmp_path))
  np.testing.assert_allclose(vp.image_embeddings(loaded, cfg2, images), vp.image_embeddings(params, cfg, images),
                             atol=1e-6)


def test_minilm_captions_separate_concepts():
  texts = [world.canonical_caption("knife"), world.canonical_caption("ball"),
           world.caption_for("knife", world.TRAIN_TEMPLATES[0], "striped")]
  e = vp.embed_texts(texts, batch=2)  # two chunks, the second padded (the reproduction's corpus takes seven)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
  assert e[2] @ e[0] > e[2] @ e[1]


def _fake_embed(texts, batch=128):
  """Deterministic unit vectors per text (the tiny run tests plumbing, not MiniLM)."""
  del batch
  out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=vp.EMBED_DIM) for t in texts])
  return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_tiny_pretraining_writes_a_loadable_folder_and_is_cached(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(vp, "embed_texts", _fake_embed)
  out = str(tmp_path / "vision")
  report = vp.pretrain(out, TINY, progress=False)
  for name in ("config.json", "model.safetensors", "preprocessor_config.json", "gate.json",
               "caption_embeddings.npz"):
    assert os.path.exists(os.path.join(out, name)), name
  assert 0 <= report["heldout_top1"] <= 1 and 0 <= report["train_top1"] <= 1 and report["args"]["steps"] == 3
  bank = np.load(os.path.join(out, "caption_embeddings.npz"))
  assert bank["embeddings"].shape == (37, vp.EMBED_DIM) and list(bank["concepts"]) == list(world.CONCEPT_IDS)
  cfg, params = vp.load_pretrained(out)
  assert cfg.image_size == 32 and cfg.num_layers == 2
  emb = vp.image_embeddings(params, cfg, np.stack([r["image"] for r in world.make_split(1, image_size=32)[:3]]))
  assert emb.shape == (3, vp.EMBED_DIM)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  stamp = os.path.getmtime(os.path.join(out, "model.safetensors"))
  capsys.readouterr()
  assert vp.main(["--out", out, "--steps", "3", "--batch", "8", "--hidden", "32", "--layers", "2", "--heads", "2",
                  "--image-size", "32", "--eval-per-concept", "1", "--no-progress"]) == 0
  assert "cached" in capsys.readouterr().out
  assert os.path.getmtime(os.path.join(out, "model.safetensors")) == stamp


@pytest.mark.slow  # imports torch
def test_saved_folder_is_what_transformers_loads(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = _tiny_tower()
  params = vp.init_params(cfg, jax.random.PRNGKey(2))
  save_clip_vision(str(tmp_path), cfg, params["tower"], np.asarray(params["projection"]), vp.processor(32))
  reference = transformers.CLIPVisionModelWithProjection.from_pretrained(str(tmp_path)).eval()
  images = np.stack([r["image"] for r in world.make_split(1, "train", image_size=32)[:4]])
  with torch.no_grad():
    want = reference(pixel_values=torch.tensor(vp.to_pixels(images).transpose(0, 3, 1, 2))).image_embeds.numpy()
  want = want / np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(vp.image_embeddings(params, cfg, images), want, atol=1e-5)
