"""ToyCLIP: a trained text-to-image embedding finds a caption's place among earlier keyframes."""

import numpy as np
import pytest

from cinema_jax import errors
from cinema_jax import retrieval
from cinema_jax import toy_clip
from data_pipelines import toy_render
from data_pipelines import toy_world

_WORLD = toy_world.WorldConfig(num_frames=1)


def _movies(seed: int, count: int):
  shots = [toy_world.make_movie(seed, m, _WORLD)["shots"] for m in range(count)]
  return shots, [np.stack([toy_render.render_shot(s, 32, 64)[0] for s in movie]) for movie in shots]


@pytest.fixture(scope="module")
def clip():
  shots, images = _movies(0, 24)
  return toy_clip.fit(np.concatenate(images), [s["caption"] for movie in shots for s in movie], steps=400)


def test_text_to_image_retrieval_finds_the_place_and_the_flashback(clip):
  shots, images = _movies(1, 60)  # another world seed: held out
  same_place = same_place_shuffled = asked = flashbacks = opening_found = 0
  rng = np.random.default_rng(0)
  for movie, frames in zip(shots, images):
    q, h = clip.texts([s["caption"] for s in movie]), clip.images(frames)
    assert q.shape == h.shape == (len(movie), clip.dim)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, rtol=1e-5)
    for k in range(1, len(movie)):
      place = movie[k]["location"]["name"]
      if not any(movie[i]["location"]["name"] == place for i in range(k)):
        continue  # a new place: no earlier keyframe can match
      asked += 1
      best = retrieval.select("image", k, 1, query=q[k], history=h[:k])[-1]
      same_place += movie[best]["location"]["name"] == place
      shuffled = retrieval.select("image", k, 1, query=q[k], history=h[:k][rng.permutation(k)])[-1]
      same_place_shuffled += movie[shuffled]["location"]["name"] == place
    ks = [k for k, s in enumerate(movie) if s["flashback_of_scene"] is not None]
    if ks:
      k, flashbacks = ks[0], flashbacks + 1
      opening_found += any(movie[i]["scene"] == 0 for i in retrieval.select("image", k, 4, query=q[k], history=h[:k]))
  assert asked > 500 and flashbacks > 20
  # Measured: 0.88 of the best-scored earlier keyframes show the caption's place (0.46 at random);
  # a flashback's opening scene is among the 4 chosen 0.89 of the time (the most recent 4: < 0.1).
  assert same_place / asked >= 0.8 and same_place_shuffled / asked <= 0.6
  assert opening_found / flashbacks >= 0.7


def test_save_load_and_resolve(clip, tmp_path):
  path = str(tmp_path / "clip.safetensors")
  toy_clip.save(clip, path)
  again = toy_clip.load(path)
  caps = ["Wide shot in the forest. Mia jumps.", "Close shot in the desert."]
  np.testing.assert_array_equal(again.texts(caps), clip.texts(caps))
  frames = np.random.default_rng(0).integers(0, 255, (3, 32, 64, 3), np.uint8)
  np.testing.assert_array_equal(again.images(frames), clip.images(frames))
  assert not list(tmp_path.glob("*.tmp.*"))  # written atomically

  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(errors.DataError, match="junk.safetensors: not a readable ToyCLIP"):
    toy_clip.load(str(tmp_path / "junk.safetensors"))
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  safetensors.numpy.save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
  with pytest.raises(errors.DataError, match="other.safetensors: not a ToyCLIP file"):
    toy_clip.load(str(tmp_path / "other.safetensors"))
  with pytest.raises(ValueError, match="uint8"):
    clip.images(frames.astype(np.float32))

  from configs import keyframe  # pylint: disable=g-import-not-at-top
  c = keyframe.get_config("tiny")
  c.data.retrieval.embedding = path
  assert toy_clip.resolve(c.data, str(tmp_path / "unused")) == path
  c.data.retrieval.embedding = str(tmp_path / "missing.safetensors")
  with pytest.raises(errors.DataError, match="config.data.retrieval.embedding=.*missing.safetensors.*no such file"):
    toy_clip.resolve(c.data, str(tmp_path))
