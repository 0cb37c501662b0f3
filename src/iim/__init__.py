"""iim: few-shot OOD detection with CLIP via Intra-Image Mining (IIM) and Symmetric MCM (S-MCM).

Pipeline (one module per stage):
    data/      benchmarks, few-shot splits, image datasets
    models     open_clip model factory (+ the project's own tiny/demo architectures, registered with
               open_clip when iim.models is first imported)
    features   frozen image features: global embedding + MaskCLIP value-path patch tokens
    extract    stage one: run the image encoder once, write the Zarr feature cache
    cache      the cache format (manifest + one Zarr group per split)
    text       prompt encoder (shared-prefix, exact CLIP text features)
    train      stage two: IIM prompt learning from the cache
    score      OOD scores (MCM, GL-MCM, R-MCM, S-MCM) and sweeps from the cache
    metrics    FPR95, AUROC, AUPR
    predict    iim.Detector: a trained run (or zero-shot) on new images; ``iim predict``
    cli        the `iim` command line
"""

from ._version import __version__

__all__ = ["__version__", "Detector", "Predictions"]


def __getattr__(name):   # iim.Detector, imported on first use: `import iim` imports neither torch nor open_clip
    if name in ("Detector", "Predictions"):
        from . import predict
        return getattr(predict, name)
    raise AttributeError(f"module 'iim' has no attribute {name!r}")
