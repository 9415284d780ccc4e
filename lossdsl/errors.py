"""The errors lossdsl raises: one family for bad specs, one for bad calls.

Every problem with a `.loss` file is a `LossSpecError` that names the file, line
and column and shows the offending line with a caret, so neither a Lark nor a
SymPy traceback ever reaches a user.
"""
from __future__ import annotations


class LossError(Exception):
    """Base class of every error lossdsl raises on purpose."""


class LossSpecError(LossError):
    """A spec that cannot be compiled; `file`, `line`, `column` locate it (1-based)."""

    def __init__(self, message: str, file: str = "<string>", line: int = 0, column: int = 0, source: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.context = _caret(source, line, column) if source is not None else ""
        text = f"{file}:{line}:{column}: {message}"
        super().__init__(text + ("\n" + self.context if self.context else ""))


class SpecSyntaxError(LossSpecError):
    """Text that is not in the grammar."""


class SpecNameError(LossSpecError):
    """An undefined name, an unknown function or loss, or a duplicate definition."""


class SpecTypeError(LossSpecError):
    """A well-formed expression used wrongly: wrong arity, a boolean where a number goes."""


class SpecLimitError(LossSpecError):
    """A spec past one of the compiler's stated limits: its size (`frontend.parse.MAX_SPEC_CHARS`,
    `frontend.parse.MAX_SPEC_TOKENS`), its nodes once called losses are inlined (`frontend.resolve.MAX_NODES`),
    the nesting of its expressions (`frontend.ir.MAX_DEPTH`) or the size of its derivatives
    (`symbolic.derive.MAX_FORMULA_NODES`)."""


class LossParameterError(LossError, ValueError):
    """A parameter that is unknown, of the wrong kind, or breaks its constraint."""


class LossInputError(LossError, ValueError):
    """Arrays a loss cannot take: wrong count, shapes, dtypes or values outside the domain."""


class LossLabelError(LossInputError, IndexError):
    """A label is outside the axis it indexes (raised before any kernel reads with it); `row` (an
    index of the rows' shape) and `label` say which, where known."""

    def __init__(self, message: str, row: tuple[int, ...] | None = None, label: int | None = None):
        super().__init__(message)
        self.row, self.label = row, label


class LossDeviceError(LossError, RuntimeError):
    """A CUDA call on a machine without a usable GPU."""


class UnknownLossError(LossError, LookupError):
    """A name that is neither in the catalogue nor a spec file."""


class LossCacheError(LossError):
    """A cache folder lossdsl will not use: others could change the code it would load, or nowhere can be written."""


def _caret(source: str, line: int, column: int) -> str:
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    text = lines[line - 1].replace("\t", " ")
    if len(text) > 200:
        return ""
    return f"    {text}\n    {' ' * max(column - 1, 0)}^"
