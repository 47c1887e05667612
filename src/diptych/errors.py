"""Exception types. Every error a user can cause is a `DiptychError` with a message that names the
problem and the fix; the CLI prints it on one line and exits with code 2."""


class DiptychError(Exception):
    """Base class for errors caused by bad input, missing weights or bad configuration."""


class InputError(DiptychError, ValueError):
    """An image, mask, instruction or option the user gave is unusable."""


class WeightsError(DiptychError):
    """Model or adapter weights are missing, of the wrong kind, or malformed."""


def as_sentence(exc: BaseException) -> str:
    """A library exception's message as one sentence ending in a period, to append advice after it."""
    text = " ".join(str(exc).split()).rstrip(".")
    return f"{text or type(exc).__name__}."
