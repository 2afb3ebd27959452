"""The toy-movie world: procedural movies with a recurring cast and recurring locations.

A movie is written here as a script (plain Python data, JSON-able) that says, for every shot, which
location is shown with which framing, which characters are there, where, and what they do; the
renderer (toy_render.py) draws it. Everything is deterministic from (seed, movie index).

What makes the world a test of visual memory:
- character names are drawn per movie, independently of appearance, so a name never tells what a
  character looks like;
- a character is described in words at most once, at its first appearance (and only sometimes);
  later captions only name it;
- locations keep their per-movie look (landmark placement, tint) whenever the story returns to them,
  and some movies flash back to an earlier scene's location and cast after many shots.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Saturated colours that stand out against the muted backgrounds below.
COLOURS = {
    "red": (220, 38, 38),
    "orange": (249, 140, 22),
    "yellow": (250, 214, 30),
    "green": (34, 177, 76),
    "blue": (37, 99, 235),
    "purple": (147, 51, 234),
    "pink": (244, 114, 182),
    "white": (250, 250, 250),
}
SIZES = {"small": 0.30, "large": 0.44}  # character height as a fraction of frame height, medium shot
FRAMINGS = {"wide": 0.65, "medium": 1.0, "close": 1.45}  # scale applied to characters and landmark
ACTIONS = {
    "stands": "stands still",
    "walks_left": "walks to the left",
    "walks_right": "walks to the right",
    "jumps": "jumps",
    "approaches": "comes closer",
    "leaves": "walks away",
}

# name -> (sky RGB, ground RGB, horizon as a fraction of height from the top, landmark, landmark RGB)
LOCATIONS = {
    "the beach": ((150, 200, 230), (222, 200, 150), 0.55, "sun", (255, 236, 140)),
    "the forest": ((120, 160, 130), (70, 100, 60), 0.45, "tree", (40, 70, 40)),
    "the city street": ((170, 170, 185), (90, 90, 95), 0.50, "tower", (60, 60, 80)),
    "the desert": ((235, 200, 150), (200, 150, 90), 0.60, "rock", (150, 90, 60)),
    "the snowy field": ((200, 215, 230), (235, 240, 245), 0.50, "tree", (90, 110, 100)),
    "the castle hall": ((110, 80, 70), (140, 110, 90), 0.40, "tower", (80, 50, 45)),
    "the night market": ((30, 30, 70), (70, 60, 80), 0.55, "moon", (230, 230, 200)),
    "the lake shore": ((170, 210, 240), (60, 110, 160), 0.50, "rock", (110, 110, 100)),
    "the farm": ((180, 220, 250), (150, 180, 90), 0.55, "house", (170, 60, 50)),
    "the space station": ((20, 20, 35), (120, 130, 150), 0.65, "moon", (200, 200, 220)),
}

NAMES = (
    "Mia", "Tom", "Ava", "Leo", "Zoe", "Max", "Ivy", "Sam", "Eva", "Ben", "Lily", "Jack", "Nora",
    "Finn", "Ruby", "Owen", "Luna", "Eli", "Maya", "Noah", "Ella", "Hugo", "Iris", "Jude", "Kai",
    "Lara", "Milo", "Nina", "Otto", "Rosa", "Theo", "Vera", "Wade", "Yara", "Abe", "Cleo", "Dean",
    "Faye", "Gus", "Hana",
)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Knobs of the toy world (the CLI exposes them)."""

  height: int = 32
  width: int = 64
  num_frames: int = 8  # frames per shot; frame 0 is the shot's keyframe
  min_shots: int = 8
  max_shots: int = 64
  min_cast: int = 2
  max_cast: int = 6
  min_locations: int = 2
  max_locations: int = 5
  describe_probability: float = 0.5  # a character is described at its first appearance this often
  flashback_probability: float = 0.5  # a movie returns to an earlier scene this often
  fps: float = 8.0

  def __post_init__(self):
    if self.height < 8 or self.width < 8:
      raise ValueError(f"toy world: resolution {self.height}x{self.width} is below 8x8")
    if self.num_frames < 1:
      raise ValueError(f"toy world: num_frames must be >= 1, got {self.num_frames}")
    if not 1 <= self.min_shots <= self.max_shots:
      raise ValueError(f"toy world: need 1 <= min_shots <= max_shots, got {self.min_shots}, {self.max_shots}")
    if not 1 <= self.min_cast <= self.max_cast <= len(NAMES):
      raise ValueError(f"toy world: need 1 <= min_cast <= max_cast <= {len(NAMES)}")
    if not 1 <= self.min_locations <= self.max_locations <= len(LOCATIONS):
      raise ValueError(f"toy world: need 1 <= min_locations <= max_locations <= {len(LOCATIONS)}")


PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"


def vocabulary() -> list[str]:
  """Every word and punctuation mark a caption of this world can hold (lower case), padding first.

  Names are single words, so each is one token: the model can match a name in a new caption to the
  same name in an earlier one.
  """
  words = {"shot", "in", "a", ",", "."} | {f.lower() for f in FRAMINGS}
  for text in (*LOCATIONS, *ACTIONS.values(), *NAMES, *SHAPES, *COLOURS, *SIZES):
    words.update(text.lower().split())
  return [PAD_TOKEN, UNK_TOKEN, *sorted(words)]


def tokenizer_json() -> str:
  """A word-level tokenizer.json of the world's vocabulary (the `tokenizers` package, as T5's and CLIP's)."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # pylint: disable=import-outside-toplevel
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary())}, unk_token=UNK_TOKEN))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()  # "Mia," -> "mia", ","
  return tok.to_str()


def write_tokenizer(path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(tokenizer_json())


def movie_id(seed: int, index: int) -> str:
  return f"toy-{seed}-{index:06d}"


def _character(rng: np.random.Generator, name: str) -> dict[str, Any]:
  return {
      "name": name,
      "shape": SHAPES[rng.integers(len(SHAPES))],
      "colour": list(COLOURS)[rng.integers(len(COLOURS))],
      "size": list(SIZES)[rng.integers(len(SIZES))],
  }


def _location(rng: np.random.Generator, name: str) -> dict[str, Any]:
  sky, ground, horizon, landmark, landmark_rgb = LOCATIONS[name]
  tint = rng.integers(-18, 19, size=3)  # per-movie look: the same place differs between movies
  clip = lambda c: [int(v) for v in np.clip(np.asarray(c) + tint, 0, 255)]
  return {
      "name": name,
      "sky": clip(sky),
      "ground": clip(ground),
      "horizon": horizon,
      "landmark": landmark,
      "landmark_rgb": list(landmark_rgb),
      "landmark_x": round(float(rng.uniform(0.15, 0.85)), 3),
  }


def _path(rng: np.random.Generator, action: str, x0: float, num_frames: int) -> list[list[float]]:
  """Per-frame [x, lift, scale] of a character: x in frame widths, lift in frame heights."""
  s = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
  x, lift, scale = np.full_like(s, x0), np.zeros_like(s), np.ones_like(s)
  if action == "walks_left":
    x = x0 - 0.3 * s
  elif action == "walks_right":
    x = x0 + 0.3 * s
  elif action == "jumps":
    lift = 0.3 * 4 * s * (1 - s)
  elif action == "approaches":
    scale = 1.0 + 0.35 * s
  elif action == "leaves":
    scale = 1.0 - 0.35 * s
    x = x0 + (0.25 if x0 >= 0.5 else -0.25) * s
  del rng
  return [[round(float(a), 4), round(float(b), 4), round(float(c), 4)] for a, b, c in zip(x, lift, scale)]


def _start_x(rng: np.random.Generator, action: str, slot: int, count: int) -> float:
  """Characters spread over the frame; walkers start where they have room to walk."""
  lo, hi = slot / count, (slot + 1) / count
  x = rng.uniform(lo + 0.1 / count, hi - 0.1 / count) * 0.8 + 0.1
  if action == "walks_left":
    x = max(x, 0.4)
  elif action == "walks_right":
    x = min(x, 0.6)
  return round(float(x), 3)


def _caption(framing: str, location: str, members: list[dict], described: set[str], rng) -> tuple[str, list[str]]:
  parts = [f"{framing.capitalize()} shot in {location}."]
  newly_described = []
  for member in members:
    name = member["name"]
    phrase = ACTIONS[member["action"]]
    if name not in described and member["first_appearance"] and rng.random() < member["describe_p"]:
      parts.append(f"{name}, a {member['size']} {member['colour']} {member['shape']}, {phrase}.")
      newly_described.append(name)
    else:
      parts.append(f"{name} {phrase}.")
  return " ".join(parts), newly_described


def make_movie(seed: int, index: int, world: WorldConfig) -> dict[str, Any]:
  """The script of movie `index` of the world seeded by `seed`: cast, locations and every shot."""
  rng = np.random.default_rng([seed, index])
  num_shots = int(rng.integers(world.min_shots, world.max_shots + 1))
  cast_size = int(rng.integers(world.min_cast, world.max_cast + 1))
  names = rng.choice(len(NAMES), size=cast_size, replace=False)
  cast = [_character(rng, NAMES[i]) for i in names]
  loc_names = list(LOCATIONS)
  num_locations = int(rng.integers(world.min_locations, world.max_locations + 1))
  locations = [_location(rng, loc_names[i]) for i in rng.choice(len(loc_names), size=num_locations, replace=False)]

  # Scenes: a location and up to three cast members, held for 2 to 6 shots.
  scenes: list[dict[str, Any]] = []
  shot_scene: list[int] = []
  flashback_at = None
  if num_shots >= 16 and rng.random() < world.flashback_probability:
    flashback_at = int(rng.integers(num_shots // 2, num_shots - 1))
  while len(shot_scene) < num_shots:
    length = int(rng.integers(2, 7))
    flashback_of = None
    if flashback_at is not None and len(shot_scene) >= flashback_at and scenes:
      flashback_of, flashback_at = 0, None  # return to the opening scene's place and people
      location, members = scenes[0]["location"], list(scenes[0]["members"])
    else:
      location = int(rng.integers(num_locations))
      count = int(rng.integers(1, min(3, cast_size) + 1))
      members = sorted(int(i) for i in rng.choice(cast_size, size=count, replace=False))
    scenes.append({"location": location, "members": members, "flashback_of_scene": flashback_of})
    shot_scene += [len(scenes) - 1] * length
  shot_scene = shot_scene[:num_shots]

  appeared: set[int] = set()
  described: set[str] = set()
  shots = []
  for k, scene_idx in enumerate(shot_scene):
    scene = scenes[scene_idx]
    count = int(rng.integers(1, len(scene["members"]) + 1))
    on_screen = sorted(int(i) for i in rng.choice(scene["members"], size=count, replace=False))
    framing = list(FRAMINGS)[rng.integers(len(FRAMINGS))]
    members = []
    for slot, c in enumerate(on_screen):
      action = list(ACTIONS)[rng.integers(len(ACTIONS))]
      x0 = _start_x(rng, action, slot, len(on_screen))
      members.append({
          **cast[c],
          "action": action,
          "path": _path(rng, action, x0, world.num_frames),
          "first_appearance": c not in appeared,
          "describe_p": world.describe_probability,
      })
      appeared.add(c)
    location = locations[scene["location"]]
    caption, newly = _caption(framing, location["name"], members, described, rng)
    described.update(newly)
    for m in members:
      del m["describe_p"]
    shots.append({
        "shot_index": k,
        "caption": caption,
        "framing": framing,
        "location": location,
        "characters": members,
        "described": newly,
        "scene": scene_idx,
        "flashback_of_scene": scene["flashback_of_scene"],
    })
  return {
      "movie_id": movie_id(seed, index),
      "title": f"Toy movie {index} (seed {seed})",
      "cast": cast,
      "locations": locations,
      "shots": shots,
  }
