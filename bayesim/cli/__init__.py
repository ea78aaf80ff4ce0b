"""The `bayesim` command line.

Each subcommand lives in its own module in this package exposing `register(subparsers)`, which adds
its parser and sets `func(args) -> int`. Handlers import heavy libraries lazily so `--help` is fast.
User errors (`BayesimError`) print one line and exit 2; `--debug` shows the traceback first (still
exit 2).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback

from bayesim import __version__
from bayesim.errors import BayesimError

_COMMAND_MODULES = ["data", "devices", "train", "evaluate", "import_pyro", "run", "bench"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 already; keep it to one line
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bayesim", description="Analog Bayesian machine hardware simulator.")
    p.add_argument("--version", action="version", version=f"bayesim {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"bayesim.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad input, 130 interrupted, 143 / 129 on SIGTERM /
    SIGHUP, after the same cleanup as Ctrl-C).

    A closed output pipe (`bayesim data info --json | head -1`) ends quietly, as the Python docs on
    SIGPIPE recommend: the rest of the output goes to devnull and the exit code is 1.
    """
    try:
        try:
            return _main(argv)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # a broken pipe shows here, not at interpreter exit
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
            pass
        return 1


def console_main(argv: list[str] | None = None) -> int:
    """The `bayesim` console script: `main`, then Ctrl-C, SIGTERM and SIGHUP are ignored while the interpreter
    shuts down. The outputs are complete by then; a late signal must neither print a traceback nor change
    the exit code."""
    code = main(argv)
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        try:
            if sig is not None:
                signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):  # not the main thread
            pass
    return code


_complete: list[bool] = [False]  # this command's outputs are all written (see `wrote`)


def wrote(message: str) -> None:
    """Print `message` (e.g. "wrote out/x/metrics.json") once every output of the command is written: a
    Ctrl-C, SIGTERM or SIGHUP from then on no longer turns the exit code into an interruption's."""
    _complete[0] = True
    print(message)


def check_data_dir(value) -> None:
    """A --data-dir the user named must be a folder (`bayesim.paths.named_data_dir_problem`)."""
    from bayesim.paths import named_data_dir_problem

    why = None if value is None else named_data_dir_problem(value)
    if why:
        raise BayesimError(f"--data-dir {value}: {why}, or leave it out for $BAYESIM_DATA / the user cache")


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C, so that atomic writes clean up their
    temporary files (an unhandled SIGTERM would end the process without running any cleanup)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


def _handle_termination() -> dict:
    """Install the SIGTERM/SIGHUP handlers (main thread only); returns the previous ones."""
    import signal
    import threading

    old = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None:
                old[sig] = signal.signal(sig, _raise_terminated)
    return old


def _main(argv: list[str] | None) -> int:
    import signal

    old = _handle_termination()
    try:
        return _run(argv)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"bayesim: warning: {message}\n"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One warning line on stderr, on a line of its own even while a progress bar is drawn there."""
    text = _one_line_warning(message, category, filename, lineno).rstrip("\n")
    tq = sys.modules.get("tqdm")
    if file is None and tq is not None and getattr(tq.tqdm, "_instances", None):
        tq.tqdm.write(text, file=sys.stderr)  # clears the bars, writes the line, redraws them
    else:
        print(text, file=file or sys.stderr)


def _run(argv: list[str] | None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning  # no source file and line of bayesim's own code
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    _complete[0] = False
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # (also _Terminated)
        if _complete[0]:
            return 0  # after `wrote`: the outputs are complete
        if isinstance(e, _Terminated):
            print("bayesim: terminated", file=sys.stderr)
            return 128 + e.signum
        print("bayesim: interrupted", file=sys.stderr)
        return 130
    except BayesimError as e:
        if args.debug:  # the traceback for the developer, still exit 2: it is bad input
            traceback.print_exc()
        print(f"bayesim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        if args.debug:
            traceback.print_exc()
        name = str(e.filename or "")
        shown = name if len(name) <= 80 else name[:76] + " ..."
        print(f"bayesim: error: a path is too long for the file system ({len(name)} characters): {shown}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
