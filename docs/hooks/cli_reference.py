"""The command-line reference, written from glmc's own argument parser each time the site is built.

The page `cli.md` holds the marker below; this hook replaces it with every command's usage and
options, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
from unittest import mock

from glmc.cli import DATA_ROOT_ENV, build_parser

MARKER = "<!-- glmc:cli-reference -->"


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each `glmc COMMAND`, in the parser's order."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]


def option_row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.nargs == 0:  # a switch
        value = ""
    elif action.choices is not None:
        value = " \\| ".join(f"`{choice}`" for choice in action.choices)
    else:
        value = f"`{action.metavar or action.dest.upper()}`"
        if action.nargs in ("+", "*"):
            value += " …"
    default = action.default
    shown = "" if default in (None, False, [], "", argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
    help_text = (action.help or "").replace("|", "\\|").replace("\n", " ")
    return f"| {flags} | {value} | {shown} | {help_text} |"


def command_section(name: str, summary: str, parser: argparse.ArgumentParser) -> str:
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines = [f"## `glmc {name}`", "", summary[:1].upper() + summary[1:] + ".", "", "```text", usage, "```", ""]
    if actions:
        lines += ["| argument | value | default | what |", "|---|---|---|---|", *map(option_row, actions), ""]
    return "\n".join(lines)


def reference() -> str:
    environment = {key: value for key, value in os.environ.items() if key != DATA_ROOT_ENV}
    with mock.patch.dict(os.environ, environment, clear=True):  # defaults as a user without $GLMC_DATA_ROOT sees them
        parser = build_parser()
    return "\n".join(command_section(*entry) for entry in subcommands(parser))


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
