"""`jaxmosaic hybrid`: one image seen up close, another from afar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jaxmosaic.cli._common import guarded, output_name
from jaxmosaic.cli._options import command
from jaxmosaic.cli._runner import Job, RunConfig, optimise
from jaxmosaic.io.images import load_image
from jaxmosaic.pictures import distance_preview
from jaxmosaic.techniques.hybrid import HybridConfig, HybridInputs, HybridMethod, hybrid_memory, hybrid_problem


@guarded
@command(config=HybridConfig, run=RunConfig)
def hybrid(
    near: Annotated[Path, typer.Argument(help="The image seen up close (kept sharp).")],
    far: Annotated[Path, typer.Argument(help="The image seen from afar (matched after blurring).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image; with several ratios, OUT-ratioR.png each.")],
    config: HybridConfig,
    run: RunConfig,
    preview: Annotated[bool, typer.Option("--preview", help="Also write OUT-preview.png: full, 1/2, 1/4, 1/8 size side by side.")] = False,
) -> None:
    """Make a hybrid image: NEAR when seen up close, FAR from a distance."""
    ratios = config.ratios if config.method == HybridMethod.optimize else config.ratios[:1]
    outputs = [output_name(out, f"ratio{r:g}") for r in ratios] if len(ratios) > 1 else [out]
    pictures = [(output_name(path, "preview", ".png"), lambda inputs, images, i=i: distance_preview(images[i]))
                for i, path in enumerate(outputs)] if preview else []

    def load() -> HybridInputs:
        return HybridInputs(load_image(near), load_image(far), (str(near), str(far)))

    optimise(Job(technique="hybrid", config=config, out=out, outputs=outputs, inputs=[near, far], load=load,
                 memory=lambda inputs: hybrid_memory(config, inputs), problem=lambda inputs: hybrid_problem(config, inputs),
                 pictures=pictures), run)
