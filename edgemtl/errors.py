"""The one exception type that means "the user's input is wrong".

The CLI turns it into a single line on stderr and exit status 2; anything else is a bug and keeps its
traceback.
"""


class EdgemtlError(Exception):
    """Bad input: the message says what is wrong and how to fix it, in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def validation_line(exc: Exception, whole: str = "input") -> str:
    """pydantic's first validation error as one `path.to.field: message` (`whole` when it is about the whole)."""
    error = exc.errors()[0]  # type: ignore[attr-defined] - a pydantic ValidationError
    where = ".".join(str(part) for part in error["loc"]) or whole
    return f"{where}: {error['msg']}"


class VerificationError(EdgemtlError):
    """A compiled artifact does not compute what its reference does (a graph, C or HLS output off its bound): the
    CLI exits 3, so a script can tell a failed check from bad input (2) and from a bug (1)."""
