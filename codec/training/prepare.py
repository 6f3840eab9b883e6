"""Turns ../shared/data clips into a training cache, through the encoder's own face pipeline.

Per clip, in `out_dir/<clip stem>/`:
  crops.npy     uint8 (T, 256, 256, 3)  the crops the encoder codes
  landmarks.npy float32 (T, 68, 2)      smoothed landmarks, crop px (what the encoder sends)
  decoded.npy   float32 (T, 72, 2)      the motion points the receiver decodes (quantised
                                        landmarks, then the key crop's corners: the camera)
  segment.npy   int32 (T,)              segment index: a new one at each crop re-centre
and `out_dir/index.json` lists the clips. Clips already prepared are skipped, so an
interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..benchmarks import read_manifest
from ..errors import InputError


def read_cache(root, *names: str) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    """A prepared split: its index (one dict a clip) and, per name, one array a clip of
    `<name>.npy` (the crops memory-mapped: they are most of the cache)."""
    root = Path(root)
    clips = json.loads((root / "index.json").read_text())
    arrays = {
        name: [
            np.load(root / c["clip"] / f"{name}.npy", mmap_mode="r" if name == "crops" else None)
            for c in clips
        ]
        for name in names
    }
    return clips, arrays


def prepare_clip(clip_path, out: Path) -> int:
    from encoder.camera import CameraTracker
    from encoder.pipeline import FacePipeline, face_frames

    from ..motion import MotionConfig, MotionEncoder
    from ..video import probe_video, read_frames

    info = probe_video(clip_path)
    pipeline = FacePipeline(float(info.fps), info.width, info.height)
    coder = MotionEncoder(MotionConfig(ring=False))  # the ring: the skull's, as trained
    camera = CameraTracker()
    crops, lms, dec, seg = [], [], [], []
    segment = -1
    for face in face_frames(read_frames(clip_path), pipeline):
        crop = face.crop()
        key = face.index == 0 or face.recentred  # as the Encoder decides
        points = camera.motion_points(crop, face.landmarks, key)
        if key:
            segment += 1
            coder.seal()
            _, decoded = coder.intra(points, face.index)
        else:
            decoded, _ = coder.inter(points)
        crops.append(crop)
        lms.append(face.landmarks)
        dec.append(decoded)
        seg.append(segment)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "crops.npy", np.stack(crops))
    np.save(tmp / "landmarks.npy", np.stack(lms).astype(np.float32))
    np.save(tmp / "decoded.npy", np.stack(dec).astype(np.float32))
    np.save(tmp / "segment.npy", np.array(seg, np.int32))
    tmp.rename(out)
    return len(crops)


def prepare_dataset(data_dir, out_dir, split: str = "train", quiet: bool = False) -> str:
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for clip in tqdm(read_manifest(data_dir, split), desc=f"prepare {split}", disable=quiet):
        target = out_dir / clip.path.stem
        if not target.is_dir():
            try:
                prepare_clip(clip.path, target)
            except InputError as e:
                print(f"skipped {clip.path.name}: {e}")
                continue
        frames = len(np.load(target / "segment.npy"))
        index.append(
            {
                "clip": clip.path.stem,
                "identity": clip.identity,
                "kind": clip.kind,
                "fps": clip.fps,
                "frames": frames,
            }
        )
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return f"{len(index)} {split} clips, {sum(c['frames'] for c in index)} frames in {out_dir}"
