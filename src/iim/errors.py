"""One exception type for every user-facing failure.

Library code raises :class:`IIMError` with a one-line message that says what is wrong and how to
fix it; the CLI prints it as ``Error: <message>`` and exits with status 2 (no traceback).
"""


class IIMError(Exception):
    """A clear, user-facing error (bad input, missing data, incompatible cache, ...)."""
