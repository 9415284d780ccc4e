"""The `lossdsl` command: list, show, compile, check."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import registry
from .compiler import load
from .errors import LossError, LossInputError
from .runtime import Loss


def _param(text: str) -> tuple[str, object]:
    """`name=value`: true/false, a number, or else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if value in ("true", "false"):
        return name, value == "true"
    try:
        return name, float(value)
    except ValueError:
        return name, value


def _load(args) -> Loss:
    return load(args.loss, **dict(args.param or []))


def cmd_list(args) -> int:
    aliases: dict[str, list[str]] = {}
    for alias, name in registry.aliases().items():
        aliases.setdefault(name, []).append(alias)
    for name in registry.names():
        loss, _ = registry.get(name)
        summary = loss.doc.splitlines()[0] if loss.doc else ""
        also = f" (also {', '.join(sorted(aliases[name]))})" if name in aliases else ""
        print(f"{name:<18}{summary}{also}")
    return 0


def cmd_show(args) -> int:
    loss = _load(args)
    plan = None
    if args.plan:
        from .sharding import describe
        inner = getattr(loss, "loss", loss)  # a linear head: its loss over the logits
        if getattr(inner, "_resolved", None) is None or inner._resolved.axis is None:
            raise LossInputError(f"{loss.name} has no class axis to split across processes")
        plan = describe(inner._backend.block_plan())
    print(f"loss {loss.name}({', '.join(loss.inputs)}) wrt {', '.join(loss.wrt)}")
    if loss.params:
        print("params: " + ", ".join(f"{k}={v!r}" for k, v in loss.params.items()))
    if loss.doc:
        print("\n" + loss.doc + "\n")
    lines = loss.explain(latex=args.latex).splitlines()
    print("\n".join(lines if args.grad else [line for line in lines if not line.startswith(f"d{loss.name}/d")]))
    if plan:
        print(f"\n# the class axis split across processes: each holds a slice of it\n{plan}")
    if args.source or args.grad:
        source = loss.source(args.source or "cpu", args.dtype)
        if not args.source:  # --grad alone: the fused kernel, where the gradient is computed
            source = source[source.rindex("# loss ", 0, source.index("def loss_value_and_grad(")):]
        print("\n" + source)
    return 0


def cmd_compile(args) -> int:
    loss = _load(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for dtype in args.dtype:
        path = out / f"{loss.name}_{dtype}.py"
        path.write_text(loss.source("cpu", dtype), encoding="utf-8")
        print(f"wrote {path}")
    return 0


def cmd_check(args) -> int:
    from .gradcheck import check, format_table

    loss = _load(args)
    rows = check(loss, points=args.points, seed=args.seed)
    print(format_table(loss, rows))
    return 0 if all(r.passed for r in rows) else 1


def cmd_plot(args) -> int:
    from .plot import plot
    params = dict(args.param or [])
    losses = []
    for name in args.losses:
        loss = load(name)
        losses.append(loss.with_params(**{k: v for k, v in params.items() if k in loss.params}))
    print(plot(losses, args.output, args.target, tuple(args.range)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lossdsl", description="Compile loss functions written as formulas.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the built-in losses").set_defaults(run=cmd_list)

    def with_loss(name: str, help: str):
        sub = commands.add_parser(name, help=help)
        sub.add_argument("loss", help="a catalogue name or a .loss file")
        sub.add_argument("-p", "--param", type=_param, action="append", metavar="NAME=VALUE",
                         help="a parameter value (repeatable)")
        return sub

    show = with_loss("show", "the formula, and optionally its gradient and generated code")
    show.add_argument("--grad", action="store_true", help="the derived gradient and the fused kernel")
    show.add_argument("--source", nargs="?", const="cpu", choices=["cpu", "cuda"],
                      help="the whole generated module, for the CPU (default) or CUDA")
    show.add_argument("--latex", action="store_true", help="formulas as LaTeX")
    show.add_argument("--plan", action="store_true",
                      help="the collectives a loss over a class axis split across processes needs")
    show.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    show.set_defaults(run=cmd_show)

    comp = with_loss("compile", "write the generated module(s) to a folder")
    comp.add_argument("-o", "--output", default=".", help="folder (default: the current one)")
    comp.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    comp.set_defaults(run=cmd_compile)

    drawing = commands.add_parser("plot", help="draw losses and their gradients against the prediction")
    drawing.add_argument("losses", nargs="+", metavar="LOSS", help="catalogue names or .loss files")
    drawing.add_argument("-o", "--output", required=True, help="the image file to write (e.g. losses.png)")
    drawing.add_argument("-p", "--param", type=_param, action="append", metavar="NAME=VALUE",
                         help="a parameter value for every loss that has it (repeatable)")
    drawing.add_argument("--target", type=float, help="the value other inputs are held at (default: 1 where allowed)")
    drawing.add_argument("--range", type=float, nargs=2, default=(-3.0, 3.0), metavar=("LOW", "HIGH"))
    drawing.set_defaults(run=cmd_plot)

    chk = with_loss("check", "verify the derived gradient against finite differences")
    chk.add_argument("--points", type=int, default=256)
    chk.add_argument("--seed", type=int, default=0)
    chk.set_defaults(run=cmd_check)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except LossError as exc:
        print(f"lossdsl: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lossdsl show … | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
