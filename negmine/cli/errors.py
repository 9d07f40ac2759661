"""Exit codes, and how an exception becomes one line and one of them.

=====  =====================================================================
code   meaning
=====  =====================================================================
0      success
1      the check failed: ``validate`` found violations, ``index check
       --min-recall R`` measured a recall below R, ``demo``'s validation
       failed
2      bad input or usage: a command-line error, or an error the library
       raises about its input (``ValueError``, ``TypeError``, ``LookupError``,
       ``OSError`` such as a missing file or a full disk), a missing optional
       package (``ImportError``), or not enough memory for the settings (the
       message names the setting that lowers it)
3      an internal error: any other exception (a bug; ``--debug`` shows the
       traceback)
130    interrupted (Ctrl-C); an interrupted ``mine`` continues with ``--resume``
=====  =====================================================================
"""

from __future__ import annotations

import argparse
import sys

__all__ = [
    "EPILOG",
    "EXIT_CHECK_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "report_error",
    "prog_name",
    "report_interrupt",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

#: The exit-code table of ``negmine --help``.
EPILOG = """\
exit codes:
  0    success
  1    the check failed: validate found violations, index check --min-recall R
       measured less than R, demo's validation failed
  2    bad input or usage (wrong option, missing file, invalid data, a missing
       optional package, not enough memory for the settings: the message names
       the setting that lowers it)
  3    internal error (a bug: rerun with --debug for the traceback)
  130  interrupted (Ctrl-C); mine continues an interrupted run with --resume

Every error is one line on stderr; --debug adds the traceback.

example:
  negmine mine data/ --out runs/first --n-neg 12 --seed 7
"""

#: Errors about the input or the environment (exit 2); anything else is ours.
_INPUT_ERRORS = (ValueError, TypeError, LookupError, ArithmeticError, OSError, ImportError)

#: What lowers memory, per command (MemoryError).
_MEMORY_HINTS = {
    "mine": "lower --batch-size, search an index with compressed storage (negmine index build "
    "--spec clusters,SQ8, then --index), or give the inputs as .npy files (memory-mapped)",
    "demo": "lower --sources, --pairs or --batch-size",
    "index": "choose compressed storage (--spec clusters,SQ8 or clusters,fp16), or --spec auto "
    "with a smaller --memory-budget; give the sources as a .npy file (memory-mapped)",
    "validate": "give the inputs as .npy files (memory-mapped)",
    "report": "give the inputs as .npy files (memory-mapped), or omit --data",
    "bench": "run a smaller workload (--workloads 20k, --store 20k)",
}


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} ... {lines[-1]}"


def _detail(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return f"missing key {exc.args[0]!r}"  # str(KeyError) is only the quoted key
    return _one_line(str(exc))


def prog_name(args: argparse.Namespace) -> str:
    """``negmine COMMAND`` (``negmine index ACTION``), to begin a message with."""
    action = getattr(args, "index_command", None)
    return f"negmine {args.command}" + (f" {action}" if action else "")


def report_error(exc: BaseException, args: argparse.Namespace) -> int:
    """Print ``exc`` as one line on stderr and return its exit code."""
    prog = prog_name(args)
    if isinstance(exc, MemoryError):
        hint = _MEMORY_HINTS.get(args.command, "lower the sizes given on the command line")
        detail = _one_line(str(exc)) or "an allocation failed"
        print(f"{prog}: error: out of memory ({detail}); to use less: {hint}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, _INPUT_ERRORS):
        print(f"{prog}: error: {_detail(exc) or type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE
    detail = _detail(exc)
    print(
        f"{prog}: internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
        "(rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def report_interrupt(args: argparse.Namespace) -> int:
    """Say what an interrupted command left behind; return 130."""
    if args.command == "mine" and getattr(args, "out", None) is not None:
        print(
            f"negmine mine: interrupted; finished blocks are kept: run the same command with "
            f"--resume to continue into {args.out}",
            file=sys.stderr,
        )
    else:
        print(f"{prog_name(args)}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
