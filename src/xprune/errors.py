"""Exceptions raised by xprune.

Every error xprune raises on bad input derives from :class:`XpruneError` (itself
a ``ValueError``), and its message names the problem and how to fix it.
"""


class XpruneError(ValueError):
    """Base class of the errors xprune raises for bad input."""


class NothingToPrune(XpruneError):
    """The model has no unit of the requested kind that may be removed."""


class DataError(XpruneError):
    """The data does not fit the model or is empty / malformed."""


class UnknownName(XpruneError, KeyError):
    """A name (unit group, layer, registry entry) that does not exist; also a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class XpruneTypeError(XpruneError, TypeError):
    """An argument of the wrong type; also a ``TypeError``."""


class XpruneWarning(UserWarning):
    """Base class of the warnings xprune emits: a result that is valid but probably not what was wanted.

    The command line prints each as one line ``warning: ...``; in Python, filter them with
    ``warnings.filterwarnings("ignore", category=xprune.errors.XpruneWarning)``.
    """


class DegenerateResult(XpruneWarning):
    """A plan or a pruned model that is degenerate: nothing removed, a layer left with 1-2 units, accuracy at chance."""
