"""Stage 2b: a spec that calls an intrinsic, split into the stages the compiler already handles.

    loss ctc_mxnet(pred[c], label, pred_lengths = none, label_lengths = none)
        ragged pred along 1 by pred_lengths            # time axis, one sequence per batch entry
        ragged label along 1 by label_lengths padded with -1
        nll = ctc_nll(pred - logsumexp(pred, c), label, -1)
        ctc_mxnet = nll

becomes three pieces, each an ordinary loss definition built from the spec's own IR:
- before: the intrinsic's scores argument S over the class axis, as the row loss
  `sum(upstream*S, c)` differentiated with respect to the scores input and `upstream`: its
  gradient for `upstream` is S itself (the forward pass), its gradient for the input is the
  vector-Jacobian product of S with the intrinsic's gradient (the chain rule). None when S
  is the input itself.
- the intrinsic call, with its labels (a ragged input) and index arguments;
- after: an elementwise loss of the intrinsic's per-sequence result (and the lengths),
  from the lines that follow it; `mean of EXPR` gives a second one that reduction="mean" uses.
A "rows" intrinsic (multilabel_hinge) splits the same way, with no `ragged` lines: its scores and
its labels are both inputs over the class axis (`loss multilabel_margin(x[c], target[c])`), the
labels padded (its third argument says with what), and its result has one value per row.
Nothing here parses text or runs SymPy: the pieces go through resolve and codegen as usual.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import ir
from ..errors import SpecNameError, SpecTypeError
from ..intrinsics import INTRINSICS, Intrinsic


@dataclass(frozen=True)
class SequenceStages:
    spec: ir.LossDef
    intrinsic: Intrinsic
    scores: str  # the input with the class axis
    labels: str  # the input of labels: ragged (sequences), or over the class axis too (rows)
    index: ir.Expr  # the intrinsic's whole-number argument (CTC's blank, a padding), an expression of parameters
    before: ir.LossDef | None
    after: ir.LossDef
    mean: ir.LossDef | None  # `mean of`, when the spec has it
    ragged: dict[str, ir.Ragged]  # by input name: the scores' time axis and the labels' axis (none for rows)


def uses_intrinsic(loss: ir.LossDef) -> bool:
    return any(_calls(local.expr) for local in loss.locals) or bool(loss.ragged) or loss.mean_of is not None


def split(loss: ir.LossDef, source: str | None = None) -> SequenceStages:
    """The stages of a spec that calls an intrinsic; spec errors point at its text."""
    def fail(message: str, pos: ir.Pos, cls=SpecTypeError):
        return cls(message, loss.file, pos.line, pos.column, source)

    lines = [k for k, local in enumerate(loss.locals) if _calls(local.expr)]
    if len(lines) != 1:
        where = loss.locals[lines[1]].pos if lines else (loss.ragged[0].pos if loss.ragged else loss.pos)
        raise fail("a loss calls one intrinsic (" + ", ".join(INTRINSICS) + "), on a line of its own", where)
    line = loss.locals[lines[0]]
    call = line.expr
    if not isinstance(call, ir.Call) or call.func not in INTRINSICS:
        raise fail(f"an intrinsic call is a line of its own: `{line.name} = {_first_call(call).func}(...)`",
                   line.pos)
    intrinsic = INTRINSICS[call.func]
    if len(call.args) != len(intrinsic.arguments) or call.kwargs:
        raise fail(f"{intrinsic.doc}", call.pos)
    scores_arg, labels_arg, index = call.args
    inputs = _row_inputs if intrinsic.kind == "rows" else _sequence_inputs
    scores, ragged, lengths = inputs(loss, call.func, labels_arg, call.pos, fail)
    if loss.wrt not in ((), (scores.name,)):
        raise fail(f"a loss around {call.func}() is differentiated with respect to {scores.name}", loss.pos)
    earlier = {local.name: local for local in loss.locals[:lines[0]]}
    result = line.name if line.name != loss.name else f"{loss.name}_nll"
    after_locals = list(loss.locals[lines[0] + 1:]) or [ir.Local(loss.name, ir.Name(result), line.pos)]
    after_inputs = (ir.Input(result, pos=line.pos),) + tuple(
        i for i in loss.inputs if i.name in lengths)
    after = _definition(loss, loss.name, after_inputs, (result,), _needed(after_locals, earlier) + after_locals)
    mean = None
    if loss.mean_of is not None:
        term = ir.Local(f"{loss.name}_mean_term", loss.mean_of, loss.mean_of.pos)
        mean = _definition(loss, term.name, after_inputs, (result,),
                           _needed([*after_locals, term], earlier) + after_locals + [term])
    before = None
    if scores_arg != ir.Name(scores.name):
        upstream = _fresh("upstream", loss)
        body = ir.Local(f"{loss.name}_scores", ir.Call("sum", (ir.BinOp("*", ir.Name(upstream), scores_arg),
                                                               ir.Name(scores.axis))), scores_arg.pos)
        before = _definition(loss, body.name, (scores, ir.Input(upstream, axis=scores.axis)), (scores.name, upstream),
                             _needed([body], earlier) + [body])
    return SequenceStages(loss, intrinsic, scores.name, labels_arg.id, index, before, after, mean, ragged)


def _sequence_inputs(loss: ir.LossDef, func: str, labels_arg: ir.Expr, pos: ir.Pos, fail):
    """(the scores input, the ragged declarations by input, the lengths inputs) of a sequence intrinsic's spec:
    one input over the class axis, it and the labels ragged, and no inputs besides their lengths."""
    axis_inputs = [i for i in loss.inputs if i.axis]
    if len(axis_inputs) != 1:
        raise fail("a sequence loss has one input with the class axis (logits[c])", loss.pos)
    scores = axis_inputs[0]
    ragged = _ragged(loss, fail)
    if not isinstance(labels_arg, ir.Name) or labels_arg.id not in ragged or labels_arg.id == scores.name:
        raise fail(f"the labels of {func}() must be a ragged input (`ragged NAME along ... by LENGTHS`)", pos)
    if set(ragged) != {scores.name, labels_arg.id}:
        raise fail(f"declare `ragged {scores.name} along TIME_AXIS by LENGTHS` and the labels' `ragged` line, and "
                   "no other", loss.pos)
    lengths = {r.lengths for r in ragged.values()}
    for spec_input in loss.inputs:
        if spec_input.name not in {scores.name, labels_arg.id, *lengths}:
            raise fail(f"input {spec_input.name}: a sequence loss takes its scores, labels and their lengths "
                       "(per-sequence weights are sample_weight)", spec_input.pos)
        if spec_input.default is not None or (spec_input.optional and spec_input.name not in lengths):
            raise fail(f"input {spec_input.name}: only lengths may be left out (`= none`)", spec_input.pos)
    return scores, ragged, lengths


def _row_inputs(loss: ir.LossDef, func: str, labels_arg: ir.Expr, pos: ir.Pos, fail):
    """The same for a rows intrinsic: exactly two inputs, the scores and the labels, both over the class
    axis (`x[c], target[c]`: the labels have the scores' shape), nothing ragged."""
    if loss.ragged:
        raise fail(f"{func}() reads rows, not sequences: no `ragged` lines (its labels end at the padding it "
                   "takes)", loss.ragged[0].pos)
    names = {i.name: i for i in loss.inputs}
    if not isinstance(labels_arg, ir.Name) or labels_arg.id not in names or not names[labels_arg.id].axis:
        raise fail(f"the labels of {func}() must be an input over the class axis, like its scores (`target[c]`)",
                   pos)
    others = [i for i in loss.inputs if i.name != labels_arg.id]
    if len(others) != 1 or others[0].axis != names[labels_arg.id].axis:
        where = others[1].pos if len(others) > 1 else loss.pos
        raise fail(f"a loss around {func}() takes two inputs over one class axis, its scores and its labels "
                   "(`x[c], target[c]`; per-row weights are sample_weight)", where)
    for spec_input in loss.inputs:
        if spec_input.default is not None or spec_input.optional:
            raise fail(f"input {spec_input.name}: the inputs of a loss around {func}() may not be left out",
                       spec_input.pos)
    return others[0], {}, set()


def _ragged(loss: ir.LossDef, fail) -> dict[str, ir.Ragged]:
    names = {i.name: i for i in loss.inputs}
    ragged: dict[str, ir.Ragged] = {}
    for r in loss.ragged:
        for name in (r.input, r.lengths):
            if name not in names:
                raise fail(f"`ragged {r.input} ... by {r.lengths}`: {loss.name} has no input {name}", r.pos,
                           SpecNameError)
        if r.input in ragged:
            raise fail(f"{r.input} is declared ragged twice", r.pos)
        if names[r.lengths].axis is not None:
            raise fail(f"lengths {r.lengths} hold one integer per sequence: no class axis", r.pos)
        ragged[r.input] = r
    return ragged


def _definition(spec: ir.LossDef, name: str, inputs, wrt, locals_) -> ir.LossDef:
    """A loss definition from the spec's own IR: its parameters, file and (with the class axis) axis position."""
    axis = spec.axis_position if any(i.axis for i in inputs) else None
    return ir.LossDef(name, tuple(inputs), tuple(wrt), spec.params, tuple(locals_), spec.doc, (), spec.file,
                      spec.pos, axis_position=axis)


def _needed(lines: list[ir.Local], earlier: dict[str, ir.Local]) -> list[ir.Local]:
    """The earlier locals that `lines` use, directly or through each other, in the spec's order."""
    wanted: set[str] = set()
    pending = [name for line in lines for name in ir.names_in(line.expr)]
    while pending:
        name = pending.pop()
        if name in earlier and name not in wanted:
            wanted.add(name)
            pending.extend(ir.names_in(earlier[name].expr))
    return [local for name, local in earlier.items() if name in wanted]


def _calls(expr: ir.Expr) -> bool:
    return _first_call(expr) is not None


def _first_call(expr: ir.Expr) -> ir.Call | None:
    if isinstance(expr, ir.Call) and expr.func in INTRINSICS:
        return expr
    return next((c for c in map(_first_call, ir.children(expr)) if c is not None), None)


def _fresh(stem: str, loss: ir.LossDef) -> str:
    taken = {i.name for i in loss.inputs} | {p.name for p in loss.params} | {lo.name for lo in loss.locals}
    return next(f"{stem}{k or ''}" for k in range(len(taken) + 1) if f"{stem}{k or ''}" not in taken)

