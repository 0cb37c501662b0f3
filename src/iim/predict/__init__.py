"""Flag new images with a trained detector: :class:`Detector` (``iim.Detector``) and ``iim predict``.

    det = iim.Detector.from_run("runs/NAME")            # or Detector.from_cache("cache/NAME"): 0-shot
    out = det.predict(["a.jpg", "photos/b.png"])       # paths, PIL images or a preprocessed batch
    out.scores, out.decisions, out.classes, out.probabilities, out.top3_classes

    detector  Detector and Predictions
    inputs    which files IMAGES... (files, folders, globs) select

Its command, ``iim predict``, is :mod:`iim.cli.predict`.
"""
from .detector import Detector, Predictions

__all__ = ["Detector", "Predictions"]
