"""``python -m iim``: the ``iim`` command (also torchrun's module entry: ``torchrun ... -m iim grid``)."""
from .cli import main

if __name__ == "__main__":
    main()
