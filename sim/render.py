"""Offscreen rollout videos: run a policy in an env and write a GIF or MP4.

Headless machines need ``MUJOCO_GL=egl`` (sim.model and sim.env default it before
importing MuJoCo) and Debian's ``libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import imageio.v2 as imageio
import numpy as np
from tqdm import tqdm

ActFn = Callable[[np.ndarray], np.ndarray]


#: Output formats by suffix, and the Python module each needs beyond imageio itself.
VIDEO_WRITERS: dict[str, tuple[str, ...]] = {".gif": (), ".mp4": ("imageio_ffmpeg", "av")}


def check_video_writer(path: str | Path) -> None:
    """Fail before any rendering if ``path``'s format cannot be written here.

    A GIF needs only imageio (Pillow); an MP4 needs imageio's ffmpeg or PyAV plugin, which
    are not dependencies of robotd. Raises ValueError saying how to get one.
    """
    import importlib.util

    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_WRITERS:
        raise ValueError(f"{path}: cannot write {suffix or 'a file without suffix'}; "
                         f"use one of {', '.join(VIDEO_WRITERS)}")
    needs = VIDEO_WRITERS[suffix]
    if needs and not any(importlib.util.find_spec(module) for module in needs):
        raise ValueError(f"{path}: writing {suffix} needs imageio's ffmpeg plugin, which is not installed "
                         f"(pip install imageio-ffmpeg), or write a .gif instead")


#: Height of the caption band written over the top of each frame (pixels).
CAPTION_BAND_PX = 14


def caption_frame(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame`` with ``text`` in white on a dark band across its top (a new array)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, CAPTION_BAND_PX - 1), fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return np.asarray(image)


def _torso_tilt_deg(env) -> float:
    """The simulated torso's tilt from vertical (ground truth, degrees)."""
    up_z = float(env.data.xmat[env.biped.torso_id, 8])
    return float(np.degrees(np.arccos(np.clip(up_z, -1.0, 1.0))))


def write_rollout(env, act_fn: ActFn, path: str | Path, seconds: float = 5.0, fps: int = 25,
                  seed: int | None = 0, reset_fn: Callable[[], None] | None = None,
                  label: str | None = None) -> Path:
    """Roll ``act_fn`` (observation -> action) out in ``env`` and write every frame due at ``fps``.

    ``env`` must have ``render_mode="rgb_array"``. The format follows the suffix (``.gif``
    or ``.mp4``; MP4 needs imageio-ffmpeg). An episode that ends early is reset and the
    video goes on, so the file always lasts ``seconds``; ``reset_fn`` is called at every
    episode start (a recurrent policy forgets its state there). With ``label`` (the policy's
    name), each frame is captioned with it, the time and the torso's tilt. Returns the path.
    """
    path = Path(path)
    check_video_writer(path)
    control_hz = float(env.metadata.get("render_fps", 50))
    n_steps = int(round(seconds * control_hz))
    frame_every = max(1, int(round(control_hz / fps)))
    reset = reset_fn or (lambda: None)
    def frame(step: int) -> np.ndarray:
        image = env.render()
        if label is None:
            return image
        return caption_frame(image, f"{label}  t {step / control_hz:5.2f} s  tilt {_torso_tilt_deg(env):4.1f} deg")

    obs, _ = env.reset(seed=seed)
    reset()
    frames = [frame(0)]
    for i in tqdm(range(1, n_steps), desc=f"rollout -> {path.name}", unit="step"):
        obs, _, terminated, truncated, _ = env.step(act_fn(obs))
        if terminated or truncated:
            obs, _ = env.reset()
            reset()
        if i % frame_every == 0:
            frames.append(frame(i))
    path.parent.mkdir(parents=True, exist_ok=True)
    actual_fps = control_hz / frame_every
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000.0 / actual_fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=actual_fps)
    return path
