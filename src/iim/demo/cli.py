"""``iim demo``: the whole method offline on the generated demo world and the packaged demo CLIP."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--seed", "--seeds", "seeds", default="1", metavar="S[,S...]",
              help="Few-shot seeds; several (1,2,3) give the README's mean over seeds.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              help="Run folders, plots and the summary table.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=Path("cache/demo"),
              help="Feature cache of the demo benchmark.")
@click.option("--world", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the generated images  [default: cache/demo-data or $IIM_DEMO_DATA]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="IIM epochs  [default: 50]")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo(seeds, out, cache, world, epochs, device, no_progress):
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
    from ..extract.cli import parse_ints
    from .run import DemoSettings, run_demo

    if no_progress:
        os.environ["TQDM_DISABLE"] = "1"

    settings = DemoSettings()
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=epochs)
    run_demo(parse_ints(seeds, "--seed"), out=out, cache=cache, world=world, device=device,
             settings=settings, progress=not no_progress, echo=click.echo)
