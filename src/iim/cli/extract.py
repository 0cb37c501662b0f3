"""``iim extract``: stage one from the command line."""
from __future__ import annotations
import click

from .options import device_option, out_option, progress_option, seed_option
from ..errors import IIMError
from ..options import BATCH, VIEWS, Finite, Grid


def _list_benchmarks(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from ..data.benchmarks import OOD_SETS, known_benchmarks
    for name, description in known_benchmarks().items():
        click.echo(f"{name:18s} {description}")
    click.echo(f"{'(OOD sets)':18s} {', '.join(OOD_SETS)} (built-in benchmarks); any benchmark from a .toml file")
    ctx.exit()


@click.command("extract")
@click.option("--benchmark", "-b", required=True, metavar="NAME|FILE.toml",
              help="A registered benchmark (imagenet, imagenet100, imagenet500-easy, imagenet500-hard; "
                   "see --list) or a user benchmark TOML file.")
@click.option("--data-root", envvar="IIM_DATA_ROOT", metavar="DIR",
              help="Folder holding imagenet/ and the OOD sets [env: IIM_DATA_ROOT].")
@out_option("Cache folder or fsspec URL (memory://, s3://...)  [default: cache/<benchmark>]", short=True, url=True)
@click.option("--model", default="ViT-B-16", show_default=True, help="open_clip model name.")
@click.option("--pretrained", default="openai", show_default=True,
              help="open_clip pretrained tag, a local checkpoint file, or 'none' (random weights).")
@click.option("--splits", metavar="LIST",
              help="Comma list of train, test, ood, ood_<name>  [default: test and every OOD set, "
                   "plus train when --shots is given]")
@click.option("--shots", metavar="K[,K...]", type=Grid(integer=True, element=click.IntRange(min=1)),
              help="Images per class of the few-shot train splits, e.g. 16 or 1,2,4,8,16.")
@seed_option("Few-shot sampling seeds; one train split per (shots, seed).", many=True, default="1",
             name="seeds")
@click.option("--views", default=1, show_default=True, type=VIEWS,
              help="Augmented views per train image (1 = the eval preprocess, no augmentation).")
@click.option("--crop-scale", type=Finite(0, 1, min_open=True), default=None, metavar="S_MIN",
              help="Augmented views: RandomResizedCrop(scale=(S_MIN, 1)). Default: the benchmark's (SPEC §1: "
                   "0.85 ImageNet-1k and its halves, 0.65 ImageNet-100, 0.85 otherwise; CoOp's is 0.08).")
@click.option("--batch-size", default=128, show_default=True, type=BATCH,
              help="Images (views) per forward pass.")
@click.option("--workers", type=int, help="DataLoader worker processes  [default: min(8, CPUs)]")
@device_option
@click.option("--amp", type=click.Choice(["auto", "fp16", "bf16", "off"]), default="auto",
              show_default=True, help="Autocast dtype on CUDA (auto = fp16; CPU runs float32).")
@click.option("--skip-bad", is_flag=True,
              help="Skip unreadable images (listed in the manifest) instead of stopping.")
@progress_option
@click.option("--chunk-mb", type=Finite(min=0, min_open=True), hidden=True, help="Storage chunk size of `local` in MiB.")
@click.option("--list", "list_", is_flag=True, is_eager=True, expose_value=False, callback=_list_benchmarks,
              help="List the registered benchmarks and exit.")
def extract(benchmark, data_root, out, model, pretrained, splits, shots, seeds, views, crop_scale, batch_size,
            workers, device, amp, skip_bad, progress, chunk_mb):
    """Stage one: run the frozen CLIP image encoder once and write global + patch features to a cache.

    \b
    iim extract --benchmark imagenet --data-root /data --shots 16 --seed 1,2,3
    iim extract --benchmark my.toml --pretrained /ckpt/vit_b16.bin --shots 1,2,4,8,16
    """
    from ..cache.store import CHUNK_BYTES
    from ..extract.run import extract as run_extract

    shot_list, seed_list = shots or [], seeds
    split_list = None if splits is None else [s.strip() for s in splits.split(",") if s.strip()]
    if workers is not None and workers < 0:
        raise IIMError("--workers must be 0 or more")
    if chunk_mb is not None and chunk_mb <= 0:
        raise IIMError("--chunk-mb must be positive")
    cache = run_extract(benchmark, out, data_root=data_root, model=model, pretrained=pretrained,
                        splits=split_list, shots=shot_list, seeds=seed_list, views=views,
                        crop_scale=crop_scale, batch_size=batch_size, workers=workers, device=device, amp=amp, skip_bad=skip_bad,
                        chunk_bytes=int(chunk_mb * 2**20) if chunk_mb else CHUNK_BYTES, progress=progress)
    click.echo(f"{cache.root}: complete splits {', '.join(cache.splits()) or 'none'}", err=True)
