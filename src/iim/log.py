"""Logging: every stage reports through the standard ``logging`` module, logger ``"iim"``.

Library callers see nothing unless they configure logging (``logging.basicConfig(level="INFO")``);
the ``iim`` command installs :func:`console_handler`, which prints through ``tqdm.write`` so that
messages never break a progress bar. Stage functions still accept ``log=`` / ``warn=`` callables for
callers that want the lines themselves (tests collect them in a list).
"""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

logger = logging.getLogger("iim")


def info(msg: str) -> None:
    logger.info(msg)


def warning(msg: str) -> None:
    logger.warning(msg)


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        try:
            prefix = "warning: " if record.levelno == logging.WARNING else ""
            tqdm.write(prefix + self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def console_handler() -> None:
    """Send the ``iim`` logger's INFO and above to stderr (once; the command line calls this), and
    only there: not also to a root handler (``logging.basicConfig``), which would print every line twice."""
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        logger.addHandler(_TqdmHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
