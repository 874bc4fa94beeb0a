"""`jaxmosaic video`: style transfer for videos without flicker (Ruder, Dosovitskiy and Brox 2016)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Annotated

import jax
import typer

from jaxmosaic.cli._common import WeightsOption, guarded
from jaxmosaic.cli._options import command
from jaxmosaic.config import ConfigError, setting, whole
from jaxmosaic.distributed import DistributedConfig
from jaxmosaic.io.locks import wait_setting
from jaxmosaic.video.io import parse_frames
from jaxmosaic.video.stylize import VideoConfig


def _parse_fps(text: str) -> Fraction:
    value = Fraction(text.strip())
    if value <= 0:
        raise ValueError(text)
    return value


@dataclasses.dataclass(frozen=True)
class VideoRunConfig:
    """What a video run reads and leaves behind besides the stylised frames' settings."""

    # kept as text by the command line and parsed in __post_init__, so that a range out of order
    # ("5:2") is told as parse_frames tells it rather than as text that is not A:B
    frames: tuple[int, int | None] | str | None = setting(
        None, "Only frames A:B (0-based, B excluded; '10:' or ':50' leave a side open).", parse=str, example="A:B")
    every: int = setting(1, "Keep every Nth frame of the range (the output's frame rate is divided by N).")
    fps: Fraction | None = setting(None, "Frame rate of a frames-folder input (default 24).", parse=_parse_fps,
                                   example="24 or 30000/1001")
    crf: int = setting(18, "Quality of a video output: H.264/VP9 constant rate factor, 0 (best) to 51.")
    flow_dir: Path | None = setting(None, "Read the flows from Middlebury .flo files in this folder (forward_J_I.flo and "
                                          "backward_I_J.flo, frames numbered from 1) instead of computing them.")
    checkpoint: Path | None = setting(None, "Checkpoint folder: the flows and the finished frames of the latest two passes, "
                                            "written as each finishes.")
    resume: bool = setting(False, "Continue from --checkpoint: finished frames are never computed again.")
    metrics: Path | None = setting(None, "Write a JSON summary here: the temporal error of the output and of the input.")
    preview: bool = setting(False, "Also write OUT-strip.png (output frames over input frames) and OUT-flow.png (one pair's "
                                   "frames, flow and consistency mask).")
    overwrite: bool = setting(False, "Replace output files that exist although jaxmosaic did not write them.")
    wait: bool = wait_setting()
    devices: int | None = setting(None, "Devices to share a batch of frames over (default: all); 1 for one.")

    def __post_init__(self):
        if isinstance(self.frames, str):
            object.__setattr__(self, "frames", parse_frames(self.frames))
        whole("every", self.every, minimum=1)
        whole("crf", self.crf, minimum=0, maximum=63)
        if self.devices is not None:
            whole("devices", self.devices, minimum=1, maximum=len(jax.devices()))
        if self.resume and self.checkpoint is None:
            raise ConfigError("resume", "needs a checkpoint folder (--checkpoint)")
        if self.flow_dir is not None and not Path(self.flow_dir).is_dir():
            raise ConfigError("flow_dir", f"{self.flow_dir}: no such folder")


@guarded
@command(config=VideoConfig, run=VideoRunConfig, distributed=DistributedConfig)
def video(
    source: Annotated[Path, typer.Argument(metavar="INPUT", help="A video (.mp4, .mov, .webm, .gif, .mkv, .avi) or a folder of numbered frames.")],
    styles: Annotated[list[Path], typer.Argument(metavar="STYLE...", help="One or more style images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output video (by its suffix) or a folder of numbered frames (a name without suffix).")],
    config: VideoConfig,
    run: VideoRunConfig,
    distributed: DistributedConfig,
    weights: WeightsOption = None,
) -> None:
    """Paint every frame of INPUT in the style of STYLE, consistent from frame to frame (optical flow, temporal loss)."""
    # the run uses this package's console and weights helpers: imported when the command runs, not with the app
    from jaxmosaic.video.run import VideoJob, run_video

    try:
        run_video(VideoJob(input=source, styles=styles, out=out, config=config, weights=weights), run,
                  distributed=distributed)
    except KeyboardInterrupt:  # run_video has said what it wrote
        raise typer.Exit(130) from None
