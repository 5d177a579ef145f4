"""Every subcommand's --help names and explains its arguments, shows an example of itself
and lists its exit codes (what a person scripting around it needs)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_there_are_subcommands() -> None:
    assert {"check", "run", "init", "demo", "keygen"} <= set(subcommands())


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_names_arguments_shows_an_example_and_exit_codes(name: str) -> None:
    sp = subcommands()[name]
    text = sp.format_help()
    for action in sp._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"gateway {name}: argument {action.dest} has no help text"
    assert re.search(rf"^examples:\n(?:  .*\n)*?  .*\bgateway {name}\b", text, re.M), text
    assert re.search(r"^exit codes: 0 ", text, re.M), text


def test_version_and_top_level_help() -> None:
    exe = str(Path(sys.executable).with_name("gateway"))
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and re.fullmatch(r"gateway \d+\.\d+\.\d+\S*\n", version.stdout)
    top = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--version" in top and "gateway init site" in top
