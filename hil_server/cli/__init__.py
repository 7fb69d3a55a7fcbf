"""The ``eis-hil`` command: one module per command group, found through the ``COMMANDS`` registry.

Command output goes to stdout; logs (structlog) go to stderr. Nothing in ``hil_server`` imports this package
(a test enforces it): the library does not depend on its command line.

The registry, and the contract a command module follows
--------------------------------------------------------
``COMMANDS`` maps each command name to ``(module, help)``. Only the module of the command being run is
imported (``eis-hil --help`` imports none), so a module may import what it needs at module level, but keeps
heavy imports (TensorFlow, pandas, matplotlib) inside its functions.

A command module exposes either, for one command::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...   # the command's options
    def run(args: argparse.Namespace) -> int: ...                     # the exit code

or, for a group of commands in one module (``model.py``: train, evaluate, ...)::

    GROUP: dict[str, tuple[add_arguments, run]] = {"train": (add_train_arguments, run_train), ...}

To add a command: write the module, then add one line to ``COMMANDS`` (the help text shown by
``eis-hil --help``). Options shared by several commands live in ``_common.py`` (``add_listen_args``,
``add_connect_args``, ``add_model_arg``, ``read_secret``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("serve", "server with the bundled model and a default scenario, and a client"),
    "serve": ("serve", "stream a scenario to TCP clients in real time"),
    "decode": ("decode", "decode a byte capture (file or -) and list its frames and errors"),
    "train": ("model", "train the PINN on the measured EIS data (needs TensorFlow)"),
    "evaluate": (
        "model",
        "accuracy on unseen cells (grouped CV: PINN, plain MLP, nearest neighbour) and physical checks",
    ),
    "profiles": ("model", "list cell profiles with their trained input ranges"),
    "spectrum": ("model", "impedance spectra at given operating points, as CSV"),
    "calibrate": ("model", "fit a profile for one physical cell from its measured spectra"),
    "export-tflite": ("model", "write the PINN (physics layer included) as a .tflite model"),
    "run": ("scenario", "run a scenario as fast as possible into files (no network)"),
    "validate": ("scenario", "check scenario files without running them"),
    "sweep": ("sweep", "run a sweep file's tasks into one partitioned Parquet dataset"),
    "client": ("client", "mock BMS: connect, subscribe, check and show what arrives, send control commands"),
    "record": ("record", "connect to a server and record every frame it sends into a capture file"),
    "export": (
        "export",
        "a capture as CSV (spectra for impedance.py, states, faults) and PNG plots, MDF4 or pcapng",
    ),
    "serial-bridge": (
        "serial_bridge",
        "stream to a device on a serial port (protocol frames or AD5940-style text); see SERIAL.md",
    ),
    "replay": ("replay", "serve a recorded capture to clients with its original timing"),
    "convert": ("convert", "potentiostat files (Gamry, BioLogic, ...) to the generic CSV and back"),
    "can-bridge": ("can_bridge", "send cell states as CAN frames defined by a DBC (python-can)"),
    "capture": ("capture", "check a capture file for damage (capture check FILE), write a repaired copy"),
    "view": ("view", "live browser view of a server's stream: pack heat map, spectra, faults, timing"),
}
"""Command name -> (module in this package, help line)."""


def load_command(name: str) -> tuple[AddArguments, Run]:
    """The ``add_arguments`` and ``run`` of command ``name`` (imports its module)."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    group: dict[str, tuple[AddArguments, Run]] | None = getattr(module, "GROUP", None)
    if group is not None:
        return group[name]
    return module.add_arguments, module.run


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, the options of that one command alone are filled in (the others are
    listed with their help, which is all ``eis-hil --help`` shows)."""
    from hil_server import __version__

    parser = argparse.ArgumentParser(
        prog="eis-hil",
        description="EIS hardware-in-the-loop server for BMS development",
        allow_abbrev=False,  # or a command's --log would be taken for an abbreviation of --log-json
    )
    parser.add_argument("--version", action="version", version=f"eis-hil {__version__}")
    parser.add_argument(
        "--log-json", action="store_true", help="logs as JSON lines (default: human-readable)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--debug",
        action="store_true",
        dest="show_traceback",
        help=f"show the Python traceback of an error (also {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if only is None or only == name:
            add_arguments, run = load_command(name)
            add_arguments(command)
            command.set_defaults(func=run)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word that is one), if any."""
    return next((word for word in argv if word in COMMANDS), None)


EXIT_OK = 0
EXIT_FAILED = 1
"""The command ran and says it failed (a NAK, damage found, validation errors), or an internal error."""
EXIT_BAD_INPUT = 2
"""Bad input: an option out of range, an unwritable output, a file that cannot be read."""
EXIT_SIGINT = 128 + 2
EXIT_SIGPIPE = 128 + 13
EXIT_SIGTERM = 128 + 15
DEBUG_ENV = "EIS_HIL_DEBUG"
"""EIS_HIL_DEBUG=1 shows the Python traceback of an error, as ``--debug`` does."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C: what handles Ctrl-C (partial output kept) handles
    it too; ``main`` exits 143 instead of 130."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated


def _fail(command: str | None, message: str) -> None:
    """One line on stderr: the command and the message."""
    prefix = f"eis-hil {command}" if command else "eis-hil"
    sys.stderr.write(f"{prefix}: {message}\n")
    sys.stderr.flush()


TENSORFLOW_COMMANDS = frozenset({"train", "evaluate", "calibrate", "export-tflite"})
"""Commands that import TensorFlow: ``main`` runs them with native stderr silenced (``--debug``: not)."""


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null and ``sys.stderr`` at a copy of the old one: what Python writes
    (logs, warnings, our one-line errors) is shown, what native code writes straight to the descriptor is
    not. TensorFlow's C++ start-up and converter lines ("Could not find cuda drivers", "oneDNN custom
    operations are on", MLIR's "fully_quantize: 0, ...") are written before its logging is set up, so
    TF_CPP_MIN_LOG_LEVEL does not silence them (TensorFlow 2.21); ``--debug`` shows them."""
    import os
    import warnings

    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield  # not a real file (a test's capture)
        return
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    old = sys.stderr
    sys.stderr = os.fdopen(saved, "w", buffering=1, encoding=old.encoding, errors="backslashreplace")
    os.dup2(devnull, fd)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        sys.stderr.close()
        sys.stderr = old


def _quiet_stdout() -> None:
    """After a broken pipe (``eis-hil spectrum | head``): point stdout at /dev/null, so the interpreter's
    flush at exit does not fail a second time."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run one command: its exit status. Bad input is one line on stderr and status 2, never a traceback;
    Ctrl-C exits 130, SIGTERM 143, a closed output pipe 141; an unexpected error is one line and status 1.
    ``--debug`` (or EIS_HIL_DEBUG=1) shows the traceback."""
    import os
    import signal
    import threading

    words = sys.argv[1:] if argv is None else argv
    command = _command_in(words)
    debug = "--debug" in words[: words.index(command)] if command else "--debug" in words
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if not debug:  # TensorFlow's start-up chatter ("failed call to cuInit") reads like a failure
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    quiet = command in TENSORFLOW_COMMANDS and not debug
    try:
        with _native_stderr_silenced() if quiet else contextlib.nullcontext():
            return _run(words, command)
    except Terminated:
        if debug:
            raise
        _fail(command, "terminated (SIGTERM)")
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        if debug:
            raise
        _fail(command, "interrupted (Ctrl-C)")
        return EXIT_SIGINT
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_SIGPIPE
    except Exception as exc:
        if debug:
            raise
        if _is_bad_input(exc):
            _fail(command, str(exc).replace("\n", "; "))
            return EXIT_BAD_INPUT
        _fail(command, f"internal error: {type(exc).__name__}: {exc} (--debug shows the traceback)")
        return EXIT_FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _is_bad_input(exc: BaseException) -> bool:
    """Whether ``exc`` is about the input (a file, an option) rather than a bug: the errors the library
    raises for what it was given, and the OS errors of the files named."""
    from hil_server.capture.format import CaptureError
    from hil_server.cli._checks import UsageError
    from hil_server.eis_data import EisDataError
    from hil_server.eis_data.textfile import TextFileError
    from hil_server.model.store import ModelLoadError
    from hil_server.scenario import ScenarioError

    bad = (UsageError, OSError, UnicodeError, CaptureError, EisDataError, TextFileError, ModelLoadError)
    return isinstance(exc, (*bad, ScenarioError))


def _run(words: list[str], command: str | None) -> int:
    from hil_server.cli._logging import configure_logging

    # no command named (``--help``, a typo): no command module is loaded, argparse lists the commands
    parser = build_parser(only=command or "")
    args = parser.parse_args(words)
    configure_logging(json=args.log_json, level=args.log_level)
    from hil_server.cli._checks import check_args, option_names  # after --help, which imports no command

    problem = check_args(args.command, args, option_names(parser, args.command))
    if problem:
        _fail(args.command, problem)
        return EXIT_BAD_INPUT
    code: int = args.func(args)
    return code


__all__ = ["COMMANDS", "Terminated", "build_parser", "load_command", "main"]
