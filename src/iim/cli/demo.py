"""``iim demo``: the whole method offline on the generated demo world and the packaged demo CLIP."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from ..demo.run import DemoSettings
from ..options import EPOCHS
from .options import cache_option, device_option, out_option, progress_option, seed_option


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@seed_option("Few-shot seeds; several (1,2,3) give the README's mean over seeds.", many=True, default="1",
             aliases=("--seeds",), name="seeds")
@out_option("Run folders, plots and the summary table.", default=Path("runs/demo"))
@cache_option("Feature cache of the demo benchmark.", default=Path("cache/demo"))
@click.option("--world", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the generated images  [default: cache/demo-data or $IIM_DEMO_DATA]")
@click.option("--epochs", type=EPOCHS, default=None, help=f"IIM epochs  [default: {DemoSettings.epochs}]")
@device_option
@progress_option
def demo(seeds, out, cache, world, epochs, device, progress):
    """Run the method end to end, offline, in a few minutes on a CPU.

    \b
    Generates the demo world (20 shape-colour classes; OOD: novel shapes, novel colours, scenes,
    textures) on first use, extracts features with the packaged demo CLIP (iim-demo, weights 'demo'),
    scores 0-shot MCM / GL-MCM / R-MCM*, trains 4-shot IIM and scores it with S-MCM, then prints the
    paper-style table and where the plots are.

    \b
    iim demo                 # one seed (make demo)
    iim demo --seeds 1,2,3   # the README's numbers: mean over seeds 1, 2, 3
    """
    from ..demo.run import run_demo

    if not progress:
        os.environ["TQDM_DISABLE"] = "1"

    settings = DemoSettings()
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=epochs)
    run_demo(list(seeds), out=out, cache=cache, world=world, device=device,
             settings=settings, progress=progress, echo=click.echo)
