"""The errors biotorch raises on bad input: typed, so callers can catch them, and one line each.

They subclass the built-in error a caller would expect (``ValueError``, ``RuntimeError``), so existing
``except ValueError`` code keeps working; the command line prints them as one line and exits with status 2.

Example::

    >>> try:
    ...     biotorch.from_pretrained("out/corrupt_folder")
    ... except biotorch.errors.CheckpointError as error:
    ...     print(error)                # out/corrupt_folder/model.safetensors is not the file its config.json names ...
"""


import difflib
from collections.abc import Iterable


class BiotorchError(Exception):
    """Base of every error biotorch raises on bad input."""


class CheckpointError(BiotorchError, ValueError):
    """A weights file or checkpoint folder is corrupt, truncated, replaced, or does not fit the model."""


class ConfigError(BiotorchError, ValueError):
    """A config.json, recipe or command-line value is missing, of the wrong type or out of range."""


class RunLockedError(BiotorchError, RuntimeError):
    """Another process owns the run folder."""


class NonFiniteError(BiotorchError, RuntimeError):
    """A training loss became NaN or infinite."""


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut at a space (never inside a word or a path) to at most ``width`` characters, with
    " …" where it was cut; what a message quotes of another error."""
    line = " ".join(str(text).split())
    if len(line) <= width:
        return line
    cut = line.rfind(" ", 0, width - 1)
    return (line[:cut] if cut > 0 else line[:width - 2]) + " …"


def close_matches(value: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """What ``value`` may be a typo of, closest first, for a message's "did you mean": a choice of the same letters in
    another order (``af`` for ``fa``, which difflib misses in a short word), then difflib's close matches."""
    choices, value = list(choices), str(value)
    same_letters = [c for c in choices if c != value and sorted(c) == sorted(value)]
    return list(dict.fromkeys(same_letters + difflib.get_close_matches(value, choices, n=n, cutoff=0.5)))[:n]
