"""The command registry: lazy, complete, and each command module following the contract."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hil_server.cli import COMMANDS, build_parser, load_command


def test_help_imports_no_command_module() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from hil_server.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "loaded = [m for m in sys.modules if m.startswith('hil_server.cli.')]\n"
        "print(sorted(set(loaded) - {'hil_server.cli._logging'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_follows_the_contract(name: str) -> None:
    add_arguments, run = load_command(name)
    parser = argparse.ArgumentParser(prog=name)
    add_arguments(parser)
    assert callable(run)


def test_only_the_command_run_is_filled_in() -> None:
    parser = build_parser(only="decode")
    assert parser.parse_args(["decode", "x.bin", "--hex"]).hex
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "s.yaml", "--port", "1"])  # serve's options were not loaded


def test_client_commands_share_the_secret_options() -> None:
    parser = build_parser()
    for argv in (
        ["client", "h", "1", "--secret-env", "K"],
        ["record", "h", "1", "--out", "x", "--secret-env", "K"],
        ["serial-bridge", "--port", "loop://", "--server", "h:1", "--secret-env", "K"],
    ):
        assert parser.parse_args(argv).secret_env == "K"
