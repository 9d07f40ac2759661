"""The ``negmine`` command line.

Owns logging, progress bars (stderr), printing and exit codes; the library
itself is silent. Each command lives in a module of this package with
``register(sub, common)``, which adds the command's parser and sets ``func``
(``args -> exit code``) as a parser default; :func:`main` parses, runs
``args.func`` and turns an exception into one line and an exit code:

=====  =====================================================================
code   meaning
=====  =====================================================================
0      success
1      the check failed (``validate`` found violations, ``index check
       --min-recall R`` measured less than R, ``demo``'s validation failed)
2      bad input or usage: a command-line error, an invalid or missing input,
       a missing optional package, or not enough memory for the settings (the
       message names the setting that lowers it)
3      an internal error (any other exception)
130    interrupted (Ctrl-C); ``mine`` continues with ``--resume``
=====  =====================================================================

Errors print one line on stderr; ``--debug`` prints the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
import traceback
from typing import Any

from .._process import return_freed_blocks
from . import demo, index, mine, outputs
from .errors import EPILOG, EXIT_USAGE, prog_name, report_error, report_interrupt
from .options import HelpFormatter, Parser, add_output_flags

__all__ = ["main"]

log = logging.getLogger("negmine")

#: Commands that live in optional modules of this package; each module has
#: ``register(sub, common)``, which adds its parser and sets ``func`` (the
#: command: ``args -> exit code``) as a parser default.
_COMMAND_MODULES = ("prepare", "export", "remine")


def _register_command_modules(sub: Any, common: argparse.ArgumentParser) -> None:
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}").register(sub, common)


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="negmine",
        description="Mine tiered hard negatives for retrieval training.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    add_output_flags(parser, default=False)
    common = Parser(add_help=False)
    add_output_flags(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    mine.register(sub, common)
    _register_command_modules(sub, common)
    outputs.register(sub, common)
    index.register(sub, common)
    demo.register(sub, common)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .._version import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args)
    return_freed_blocks()  # large temporaries go back to the system when freed
    for note in getattr(args, "deprecations", None) or ():
        log.warning("%s: %s", prog_name(args), note)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        return report_interrupt(args)
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        return report_error(e, args)


if __name__ == "__main__":
    sys.exit(main())
