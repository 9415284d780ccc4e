"""Stage 1: spec text → IR (`LossDef`s), with positioned, friendly syntax errors.

Lark parses with LALR and keeps positions; a Transformer run after parsing turns
the tree into `lossdsl.frontend.ir` nodes. Spec text is only ever tokenised here: it never
reaches `eval`, `exec` or SymPy's string parsers.

Limits, checked before the text goes further: `MAX_SPEC_CHARS` characters and `MAX_SPEC_TOKENS`
tokens per file (checked before Lark, which parses about 20,000 tokens a second), and
expressions nested at most `ir.MAX_DEPTH` deep (checked on Lark's tree, before it becomes IR).
Past one, a `SpecLimitError` points at where the text crosses it.
"""
from __future__ import annotations

import functools
import re

import lark
from lark import Transformer, v_args

from . import ir
from ..errors import SpecLimitError, SpecSyntaxError
from .resources import grammar_file

MAX_SPEC_CHARS = 1_000_000  # characters in one spec file (the catalogue's largest: about 4,400)
MAX_SPEC_TOKENS = 50_000  # names, numbers, strings and operator characters, not comments (catalogue: 258)

# a comment, or a token: a string (to the end of its line if unterminated), a name or number, another character
_LEXEME = re.compile(r'#[^\n]*|(?P<token>"(?:[^"\\\n]|\\.)*"?|[A-Za-z0-9_.]+|\S)')
# the rules that become IR expressions: each is one level of nesting (`arguments`, `keyword` and
# `tuple` only group the arguments of a call or the options of `in`)
_EXPRESSIONS = frozenset({"ifelse", "or_", "and_", "not_", "compare", "member", "add", "sub", "mul", "div", "pow",
                          "neg", "number", "string", "true", "false", "name", "call", "gather"})

_TOKEN_TEXT = {
    "LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]", "LBRACE": "{", "RBRACE": "}", "COMMA": ",",
    "EQUAL": "=", "PLUS": "+", "MINUS": "-", "STAR": "*", "SLASH": "/", "COMPARE": "a comparison",
    "POW": "^", "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "$END": "end of file",
}


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(grammar_file().read_text(encoding="utf-8"), parser="lalr", propagate_positions=True,
                     maybe_placeholders=False)


def decode(text: str | bytes, file: str = "<string>") -> str:
    """Spec text as a string: UTF-8, a byte-order mark dropped."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecSyntaxError(f"spec is not UTF-8 text (bad byte at offset {exc.start})", file, 1, 1) from None
    return text.removeprefix("\ufeff")


def parse(text: str | bytes, file: str = "<string>") -> tuple[ir.LossDef, ...]:
    """Parse spec text into one `LossDef` per `loss` block."""
    text = decode(text, file)
    if not text.strip() or not re.search(r"^\s*loss\b", text, re.MULTILINE):
        line, column = _first_content(text)
        raise SpecSyntaxError("a spec needs at least one `loss NAME(inputs)` block", file, line, column, text)
    _check_size(text, file)
    try:
        tree = _parser().parse(text + "\n")  # LALR: iterative, so any nesting parses
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    _check_depth(tree, text, file)
    try:
        return _ToIR(file).transform(tree)  # recursive, safe once the depth is bounded
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, SpecSyntaxError):
            raise SpecSyntaxError(exc.orig_exc.message, file, exc.orig_exc.line, exc.orig_exc.column, text) from None
        raise


def _check_size(text: str, file: str) -> None:
    """Refuse text past `MAX_SPEC_CHARS` characters or `MAX_SPEC_TOKENS` tokens, where it crosses the limit."""
    if len(text) > MAX_SPEC_CHARS:
        raise _limit_error(f"spec text is longer than {MAX_SPEC_CHARS:,} characters (lossdsl.frontend.parse.MAX_SPEC_CHARS)",
                           text, MAX_SPEC_CHARS, file)
    tokens = 0
    for match in _LEXEME.finditer(text):
        if match.lastgroup:
            tokens += 1
            if tokens > MAX_SPEC_TOKENS:
                raise _limit_error(f"spec has more than {MAX_SPEC_TOKENS:,} tokens (lossdsl.frontend.parse.MAX_SPEC_TOKENS)",
                                   text, match.start(), file)


def _limit_error(message: str, text: str, offset: int, file: str) -> SpecLimitError:
    line = text.count("\n", 0, offset) + 1
    return SpecLimitError(message, file, line, offset - text.rfind("\n", 0, offset), text)


def _check_depth(tree: lark.Tree, text: str, file: str) -> None:
    """Refuse an expression nested deeper than `ir.MAX_DEPTH`, at the first level past it (an explicit
    stack: the tree may be far deeper than Python's recursion limit)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in _EXPRESSIONS:
            depth += 1
            if depth > ir.MAX_DEPTH:
                raise SpecLimitError(f"expression nested too deeply: more than {ir.MAX_DEPTH} levels "
                                     "(lossdsl.frontend.ir.MAX_DEPTH; in a + b + c each operator is one)", file,
                                     node.meta.line, node.meta.column, text)
        stack.extend((child, depth) for child in node.children if isinstance(child, lark.Tree))


def _first_content(text: str) -> tuple[int, int]:
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return number, len(line) - len(line.lstrip()) + 1
    return 1, 1


def _syntax_error(exc: lark.exceptions.UnexpectedInput, text: str, file: str) -> SpecSyntaxError:
    line, column = getattr(exc, "line", -1), getattr(exc, "column", -1)
    if line is None or line < 1:  # UnexpectedEOF has no position: point after the last character
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        shown = repr(char) if char.isprintable() else f"\\x{ord(char):02x}" if char else "end of file"
        message = f"unexpected character {shown}"
    elif isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        found = "end of line" if token.type == "_NL" else "end of file" if token.type == "$END" else repr(str(token))
        expected = sorted({_TOKEN_TEXT.get(t, t.strip('"').lower()) for t in exc.expected})
        message = f"unexpected {found}"
        if expected and len(expected) <= 8:
            message += "; expected " + " or ".join(expected)
    else:
        message = "unexpected end of file"
    return SpecSyntaxError(message, file, line, column, text)


def _pos(meta_or_token) -> ir.Pos:
    return ir.Pos(getattr(meta_or_token, "line", 0) or 0, getattr(meta_or_token, "column", 0) or 0)


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), token[1:-1])


@v_args(meta=True)
class _ToIR(Transformer):
    """Builds IR nodes bottom-up; each method is named after a grammar rule or alias."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    # --- spec structure ---
    def start(self, meta, losses):
        return tuple(losses)

    def loss(self, meta, items):
        name, inputs, *rest = items
        wrt = rest.pop(0) if rest and isinstance(rest[0], _Wrt) else _Wrt(())
        doc, aliases, params, locals_, ragged = [], [], [], [], []
        axis_rules: dict[str, object] = {}
        for statement in rest:
            if isinstance(statement, ir.Ragged):
                ragged.append(statement)
            elif isinstance(statement, _AxisRule):
                if statement.kind in axis_rules:
                    raise SpecSyntaxError(f"a loss takes one `{statement.text}` line", self.file,
                                          statement.pos.line, statement.pos.column)
                axis_rules[statement.kind] = statement.value
                if statement.kind == "head":  # `head linear a, b`: the kind, and the inputs that are heads
                    axis_rules["head"], axis_rules["head_inputs"] = statement.value
            elif isinstance(statement, _Doc):
                doc.append(statement.text)
            elif isinstance(statement, _Aliases):
                aliases.extend(statement.names)
            elif isinstance(statement, ir.Param):
                params.append(statement)
            else:
                locals_.append(statement)
        return ir.LossDef(str(name), tuple(inputs), wrt.names, tuple(params), tuple(locals_), "\n".join(doc),
                          tuple(aliases), self.file, _pos(name), ragged=tuple(ragged), **axis_rules)

    def inputs(self, meta, items):
        return items

    def input(self, meta, items):
        name, *rest = items
        axis = next((str(i.children[0]) for i in rest if isinstance(i, lark.Tree)), None)
        domain = next((i for i in rest if isinstance(i, ir.Domain)), ir.REAL)
        default = next((i.value for i in rest if isinstance(i, _Default)), None)
        optional = any(isinstance(i, _Default) and i.value is None for i in rest)
        return ir.Input(str(name), domain, axis, default, optional, _pos(name))

    def default(self, meta, items):
        return _Default(items[0])

    def no_default(self, meta, items):
        return _Default(None)

    def axis_position(self, meta, items):
        name, position = items
        if not float(position).is_integer():
            raise SpecSyntaxError("an axis position is a whole number", self.file, meta.line, meta.column)
        return _AxisRule("axis_position", (str(name), int(position)), "axis", _pos(meta))

    def axis_all(self, meta, items):
        return _AxisRule("axis_position", (str(items[0]), "all"), "axis", _pos(meta))

    def ignore(self, meta, items):
        return _AxisRule("ignore", items[0], "ignore if", _pos(meta))

    def list_ignore(self, meta, items):
        axis, condition = items
        return _AxisRule("list_ignore", (str(axis), condition), "ignore k if", _pos(meta))

    def mean_weight(self, meta, items):
        return _AxisRule("mean_weight", items[0], "mean weighted by", _pos(meta))

    def head(self, meta, items):
        kind, *names = items
        if str(kind) != "linear":
            raise SpecSyntaxError(f"unknown head {str(kind)!r}; the one head is `head linear`", self.file,
                                  kind.line, kind.column)
        return _AxisRule("head", (str(kind), tuple(ir.Name(str(t), _pos(t)) for t in names)), "head", _pos(meta))

    def output(self, meta, items):
        return _AxisRule("outputs", tuple(ir.Name(str(t), _pos(t)) for t in items), "output", _pos(meta))

    def sequence(self, meta, items):
        return _AxisRule("sequence", items[0], "sequence", _pos(meta))

    def mean_of(self, meta, items):
        return _AxisRule("mean_of", items[0], "mean of", _pos(meta))

    def ragged(self, meta, items):
        name, along, lengths, *padding = items
        return ir.Ragged(str(name), along, str(lengths), padding[0] if padding else None, _pos(name))

    def _interval(self, meta, items, low_open, high_open):
        (low, high), = items
        if not low < high:
            raise SpecSyntaxError(f"empty interval: {ir._num(low)} is not below {ir._num(high)}", self.file,
                                  meta.line, meta.column)
        return ir.Domain(low, high, low_open, high_open)

    def open_open(self, meta, items):
        return self._interval(meta, items, True, True)

    def closed_closed(self, meta, items):
        return self._interval(meta, items, False, False)

    def open_closed(self, meta, items):
        return self._interval(meta, items, True, False)

    def closed_open(self, meta, items):
        return self._interval(meta, items, False, True)

    def interval_open_open(self, meta, items):
        return tuple(items)

    interval_closed_closed = interval_open_closed = interval_closed_open = interval_open_open

    def choices(self, meta, items):
        return ir.Domain(min(items), max(items), False, False, tuple(items))

    def signed_number(self, meta, items):
        return float(items[0])

    def negative(self, meta, items):
        return -float(items[0])

    def inf(self, meta, items):
        return float("inf")

    def neg_inf(self, meta, items):
        return float("-inf")

    def wrt(self, meta, items):
        return _Wrt(tuple(str(t) for t in items))

    def docline(self, meta, items):
        return _Doc(_unquote(items[0]))

    def alias(self, meta, items):
        return _Aliases(tuple(str(t) for t in items))

    def param(self, meta, items):
        name, default, *constraint = items
        return ir.Param(str(name), default, constraint[0] if constraint else None, _pos(name))

    def assign(self, meta, items):
        name, expr = items
        return ir.Local(str(name), expr, _pos(name))

    # --- expressions ---
    def ifelse(self, meta, items):
        then, cond, orelse = items
        return ir.IfElse(cond, then, orelse, _pos(meta))

    def or_(self, meta, items):
        return ir.BinOp("or", items[0], items[1], _pos(meta))

    def and_(self, meta, items):
        return ir.BinOp("and", items[0], items[1], _pos(meta))

    def not_(self, meta, items):
        return ir.UnaryOp("not", items[0], _pos(meta))

    def compare(self, meta, items):
        return ir.Compare(tuple(str(t) for t in items[1::2]), tuple(items[0::2]), _pos(meta))

    def member(self, meta, items):
        return ir.Member(items[0], items[1], _pos(meta))

    def tuple(self, meta, items):
        return tuple(items)

    def _binary(op):
        def build(self, meta, items):
            return ir.BinOp(op, items[0], items[1], _pos(meta))
        return build

    add, sub, mul, div = _binary("+"), _binary("-"), _binary("*"), _binary("/")

    def pow(self, meta, items):
        return ir.BinOp("^", items[0], items[2], _pos(meta))

    def neg(self, meta, items):
        return ir.UnaryOp("-", items[0], _pos(meta))

    def number(self, meta, items):
        return ir.Num(float(items[0]), _pos(items[0]))

    def string(self, meta, items):
        return ir.Str(_unquote(items[0]), _pos(items[0]))

    def true(self, meta, items):
        return ir.Bool(True, _pos(meta))

    def false(self, meta, items):
        return ir.Bool(False, _pos(meta))

    def name(self, meta, items):
        return ir.Name(str(items[0]), _pos(items[0]))

    def call(self, meta, items):
        name, *rest = items
        arguments = rest[0] if rest else []
        args = tuple(a for a in arguments if not isinstance(a, _Keyword))
        kwargs = tuple((a.name, a.value) for a in arguments if isinstance(a, _Keyword))
        if arguments[:len(args)] != list(args):
            raise SpecSyntaxError("positional argument after a keyword argument", self.file, meta.line, meta.column)
        return ir.Call(str(name), args, kwargs, _pos(name))

    def arguments(self, meta, items):
        return items

    def keyword(self, meta, items):
        return _Keyword(str(items[0]), items[1])

    def gather(self, meta, items):
        return ir.Gather(ir.Name(str(items[0]), _pos(items[0])), items[1], _pos(items[0]))


class _Wrt:
    def __init__(self, names: tuple[str, ...]):
        self.names = names


class _Doc:
    def __init__(self, text: str):
        self.text = text


class _Aliases:
    def __init__(self, names: tuple[str, ...]):
        self.names = names


class _Default:
    def __init__(self, value: float | None):
        self.value = value


class _AxisRule:
    """A statement about rows of an axis loss: `axis c = 1`, `ignore if ...`, `mean weighted by ...`."""

    def __init__(self, kind: str, value, text: str, pos: ir.Pos):
        self.kind, self.value, self.text, self.pos = kind, value, text, pos


class _Keyword:
    def __init__(self, name: str, value: ir.Expr):
        self.name = name
        self.value = value

