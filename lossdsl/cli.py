"""The `lossdsl` command: list, show, compile, check."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

from .frontend import registry
from .compiler import load
from .errors import LossError, LossInputError
from .runtime.loss import Loss
from .runtime.protocol import LossKind


class CommandError(Exception):
    """A mistake in a command line that no loss sees (a bad output path, an empty range)."""


class _Parser(argparse.ArgumentParser):
    """argparse, its errors in one line (`lossdsl: error: ...`) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"lossdsl: error: {message} (see `{self.prog} --help`)\n")


def _integer(least: int) -> Callable[[str], int]:
    """An argument type: a whole number of at least `least`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {least}, got {text!r}")
        return value
    return parse


def _finite(text: str) -> float:
    """An argument type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


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
    names = registry.names()
    width = max(map(len, names)) + 2
    for name in names:
        loss, _ = registry.get(name)
        summary = loss.doc.splitlines()[0] if loss.doc else ""
        also = f" (also {', '.join(sorted(aliases[name]))})" if name in aliases else ""
        print(f"{name:<{width}}{summary}{also}")
    return 0


def cmd_show(args) -> int:
    loss = _load(args)
    plan = None
    if args.plan:
        from .classaxis.sharding import describe
        inner = getattr(loss, "loss", loss)  # a linear head: its loss over the logits
        if inner.signature.kind is not LossKind.ROWS:
            raise LossInputError(f"{loss.name} has no class axis to split across processes")
        plan = describe(inner.block_plan())
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
            source = source[source.rindex("\n@", 0, source.index("def loss_value_and_grad(")) + 1:]
        print("\n" + source)
    return 0


def cmd_compile(args) -> int:
    loss = _load(args)
    out = Path(args.output)
    sources = {out / f"{loss.name}_{dtype}.py": loss.source("cpu", dtype) for dtype in args.dtype}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, source in sources.items():
            path.write_text(source, encoding="utf-8")
            print(f"wrote {path}")
    except FileExistsError:
        raise CommandError(f"cannot write to {out}: it is a file, not a folder") from None
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    return 0


def cmd_check(args) -> int:
    from .gradcheck import check, format_table

    if args.sequences:
        from .runtime.preference import preference
        loss = preference(args.loss, **dict(args.param or []))
    else:
        loss = _load(args)
    rows = check(loss, points=args.points, seed=args.seed)
    print(format_table(loss, rows))
    return 0 if all(r.passed for r in rows) else 1


def _image_file(text: str) -> Path:
    """`plot -o`: a file in a folder that exists, in a format matplotlib writes (PNG without a suffix)."""
    output = Path(text)
    if output.is_dir() or text.endswith(("/", os.sep)):
        raise CommandError(f"cannot write {text}: it is a folder; give a file name such as losses.png")
    if not output.parent.is_dir():
        raise CommandError(f"cannot write {text}: {output.parent} is not a folder")
    if not output.suffix:
        return output.with_suffix(".png")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return output  # plot() says that it needs matplotlib
    formats = FigureCanvasBase.get_supported_filetypes()
    if output.suffix[1:].lower() not in formats:
        raise CommandError(f"cannot write {text}: matplotlib writes no {output.suffix} files; "
                           f"it writes {', '.join(sorted(formats))}")
    return output


def cmd_plot(args) -> int:
    from .integrations.plot import plot
    low, high = args.range
    if not low < high:
        raise CommandError(f"--range {low:g} {high:g}: LOW must be below HIGH")
    output = _image_file(args.output)
    params = dict(args.param or [])
    losses = [load(name) for name in args.losses]
    known = {name for loss in losses for name in loss.params}
    unknown = sorted(params.keys() - known)
    if unknown:
        there = f"their parameters are {', '.join(sorted(known))}" if known else "they have no parameters"
        raise CommandError(f"-p {unknown[0]}: no loss here has a parameter {unknown[0]!r}; {there}")
    losses = [loss.with_params(**{k: v for k, v in params.items() if k in loss.params}) for loss in losses]
    try:
        print(plot(losses, output, args.target, (low, high)))
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="lossdsl", description="Compile loss functions written as formulas.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the built-in losses").set_defaults(run=cmd_list)

    def with_loss(name: str, help: str):
        sub = commands.add_parser(name, help=help)
        sub.add_argument("loss", help="a catalogue name, a .loss file (its last loss), or FILE::NAME")
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
    drawing.add_argument("losses", nargs="+", metavar="LOSS", help="catalogue names, .loss files or FILE::NAME")
    drawing.add_argument("-o", "--output", required=True, help="the image file to write (e.g. losses.png)")
    drawing.add_argument("-p", "--param", type=_param, action="append", metavar="NAME=VALUE",
                         help="a parameter value for every loss that has it (repeatable)")
    drawing.add_argument("--target", type=_finite, help="the value other inputs are held at (default: 1 where allowed)")
    drawing.add_argument("--range", type=_finite, nargs=2, default=(-3.0, 3.0), metavar=("LOW", "HIGH"),
                         help="the span of the prediction, LOW < HIGH (default: -3 3)")
    drawing.set_defaults(run=cmd_plot)

    chk = with_loss("check", "verify the derived gradient against finite differences")
    chk.add_argument("--points", type=_integer(1), default=256, help="sampled points (default: 256)")
    chk.add_argument("--seed", type=_integer(0), default=0)
    chk.add_argument("--sequences", action="store_true",
                     help="a preference loss (dpo, kto, ...) through lossdsl.preference: at every logit of a few "
                          "short sequences of a policy")
    chk.set_defaults(run=cmd_check)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (LossError, CommandError) as exc:  # a spec error adds its line and a caret under the position
        print(f"lossdsl: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lossdsl show … | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
