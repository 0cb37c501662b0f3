"""Stage two: Intra-Image Mining (IIM) prompt training from the feature cache (SPEC §3).

    from iim.train import iim_losses, diversity_loss
    losses = iim_losses(local_feats, labels, id_proto, neg_proto, k=50)   # {"pos": ..., "neg": ...}

The training loop (:func:`iim.train.loop.train`) is the package ``loop/`` (one job per file, listed in
its docstring), the ``iim train`` command :mod:`iim.cli.train`; the run folder's ``checkpoint.pt`` is
written by ``checkpoint.py``.
"""
from .losses import diversity_loss, iim_losses, total_loss

__all__ = ["iim_losses", "diversity_loss", "total_loss"]
