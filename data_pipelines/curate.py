"""Real movies in: a folder of video files -> shot records (the paper's data recipe, "Data").

  python -m data_pipelines.curate --videos='films/*.mp4' --out=data/films [--captions=DIR]
      [--captioner='my_vlm --image {image}'] [--workers=4] [--short_side=400 --aspect=2.0]
      [--detector=content --threshold=27 --min_scene_len=15] [--frames=16 --fps=8]

Per movie (one worker process each, in parallel over files):
  1. shots      PySceneDetect's detector over the decoded video (PyAV backend, any ffmpeg-readable
                file); shots shorter than --min_shot_s are dropped
  2. keyframes  the middle frame of each shot; the movie's black borders (letterbox and pillarbox:
                edge rows and columns dark in every keyframe) removed; centre crop to --aspect;
                resized to --short_side; with --frames, the shot's frames from the keyframe on,
                resampled to --fps (frame 0 is the keyframe, the video model's contract)
  3. filters    too dark, too flat or blurry (variance of the Laplacian), a near copy of the previous
                kept keyframe; each counted
  4. captions   <captions>/<stem>.json ({"<shot>": "caption"}, shots numbered as detected), else
                <captions>/<stem>.srt (the subtitles that overlap the shot), else the --captioner
                command run on each keyframe (its stdout); <Name> character tags are kept as they are.
                A shot without a caption is listed in the movie's manifest and left out of the records
  5. the movie's shot records and manifest are written to <out>/movies/<movie_id>/, atomically (a
     staging folder renamed when complete)

Then every finished movie of --videos is assembled into the shot records <out>/train
(records.write_dataset, atomic): `config.data.path=<out>/train` trains on them, and
`tfds_builder.prepare(<out>, ...)` serves them as the split "train". Besides, <out>/report.json says per movie:
duration, shots found, kept, filtered by which rule, or why the file was skipped. A rerun skips
finished movies, so a killed run resumes where it stopped and ends with the same records. Corrupt,
truncated or non-video files are reported by name and skipped; the run goes on.
"""

import dataclasses
import os
import sys

from absl import app
from absl import flags

from cinema_jax import cli
from cinema_jax import errors
from cinema_jax import paths
from data_pipelines import films


def _define_flags() -> dict:
  d = films.Settings()
  return {
      "videos": flags.DEFINE_string("videos", None, "A folder of video files or a glob.", required=True),
      "out": flags.DEFINE_string("out", None, "Output folder (train/: the records; movies/, report.json).",
                                 required=True),
      "captions": flags.DEFINE_string("captions", "", "Folder of <stem>.json or <stem>.srt caption sidecars."),
      "workers": flags.DEFINE_integer("workers", 1, "Movies curated in parallel (processes).", lower_bound=1),
      "detector": flags.DEFINE_enum("detector", d.detector, list(films.DETECTORS), "PySceneDetect detector."),
      "threshold": flags.DEFINE_float("threshold", None, "Detector threshold (default: PySceneDetect's).",
                                      lower_bound=0.0),
      "min_scene_len": flags.DEFINE_integer("min_scene_len", d.min_scene_len, "Detector: frames between cuts.",
                                            lower_bound=1),
      "min_shot_s": flags.DEFINE_float("min_shot_s", d.min_shot_s, "Drop shots shorter than this (seconds).",
                                       lower_bound=0.0),
      "aspect": flags.DEFINE_float("aspect", d.aspect, "Keyframe width / height."),
      "short_side": flags.DEFINE_integer("short_side", d.short_side, "Keyframe height in pixels.", lower_bound=1),
      "frames": flags.DEFINE_integer("frames", d.frames, "Frames per shot for the video model (0: none).",
                                     lower_bound=0),
      "fps": flags.DEFINE_float("fps", d.fps, "Their frame rate."),
      "captioner": flags.DEFINE_string("captioner", "", "Command per keyframe, {image} = its PNG; stdout = caption."),
      "dark_luma": flags.DEFINE_float("dark_luma", d.dark_luma, "Filter keyframes darker than this (0-255).",
                                      lower_bound=0.0),
      "flat_laplacian": flags.DEFINE_float("flat_laplacian", d.flat_laplacian, "Filter flatter/blurrier than this.",
                                           lower_bound=0.0),
      "duplicate_diff": flags.DEFINE_float("duplicate_diff", d.duplicate_diff, "Filter near copies (0-255).",
                                           lower_bound=0.0),
  }


def main(argv, f: dict) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  v = {k: flag.value for k, flag in f.items()}
  fields = {x.name for x in dataclasses.fields(films.Settings)}
  try:
    s = films.Settings(**{k: val for k, val in v.items() if k in fields})
    s.check()
    videos = films.find_videos(v["videos"])
    if v["captions"]:
      paths.existing(v["captions"], "--captions", "folder")
    summary = films.curate(videos, v["out"], s, captions_dir=v["captions"], workers=v["workers"], progress=True)
  except (ValueError, errors.DataError) as e:
    sys.exit(f"error: {e}")
  print(films.report_table(summary))
  skipped = [e for e in summary["movies"] if e["status"].startswith("skipped")]
  if skipped:  # the others' records are written; the exit code and this line say the run is not whole
    sys.exit(f"error: {len(skipped)} of {len(summary['movies'])} films could not be curated: "
             + "; ".join(f"{e['movie_id']} ({e['status'][len('skipped: '):]})" for e in skipped[:3])
             + ("; ..." if skipped[3:] else "") + f" (report: {os.path.join(v['out'], films.REPORT_FILE)})")
  if summary["records"] is None:
    sys.exit("error: no film kept a captioned shot, so no records were written: give --captions or --captioner "
             f"(report: {os.path.join(v['out'], films.REPORT_FILE)})")


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
