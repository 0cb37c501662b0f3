"""``python -m iim.recipes get RECIPE KEY``: print one recipe value (the Makefile's source of its
defaults). A bad recipe or key is a one-line error on stderr and exit status 2."""
from __future__ import annotations

import sys

from ..errors import IIMError
from . import as_text, get

USAGE = "usage: python -m iim.recipes get RECIPE KEY  (e.g. get demo k, get paper train.n_neg)"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "get":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        print(as_text(get(argv[1], argv[2])))
    except IIMError as e:
        print(f"iim.recipes: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
