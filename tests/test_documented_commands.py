"""Every `glmc` command that README and the documentation show parses with glmc's own parser.

Commands in code blocks are parsed in full (`glmc.cli.build_parser`), and what a parser cannot
check is checked the way the command itself would before doing any work: a preset and its
`--set` values build a config, a calibration's `--set` values its parameters, a table exists.
Commands in running text (`glmc eval ... --on train`) must name a real command and real
options of it. Nothing is run: no data, no training.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from glmc.calibration import calibration_params
from glmc.cli import build_parser, set_overrides, train_overrides
from glmc.config import build_config, config_keys, load_presets, parse_override
from glmc.reproduce import load_tables

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md"),
                    ROOT / "tools" / "README.md", ROOT / "benchmarks" / "README.md"])
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
NOT_SHELL = {"text", "python", "yaml", "json", "toml", "markdown", "md", "html", "console-output"}
INLINE_CODE = re.compile(r"(?<!`)`(glmc [^`]+)`(?!`)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def documents() -> list[Path]:
    return [path for path in DOCUMENTS if path.is_file()]


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every fenced shell code block, `\\` continuations joined."""
    lines, block, joined, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            block = None if block is not None else fence.group(3).lower()
            continue
        if block is None or block in NOT_SHELL:
            continue
        if not joined:
            start = number
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        lines.append((start, joined + line))
        joined = ""
    return lines


def glmc_arguments(line: str) -> list[str] | None:
    """The arguments after `glmc` (or `torchrun ... -m glmc`) of a shell line; None when it runs no glmc command."""
    try:
        tokens = shlex.split(line.strip().removeprefix("$ "), comments=True)
    except ValueError:
        return None
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if tokens[:1] == ["glmc"]:
        return tokens[1:]
    if tokens[:1] == ["torchrun"] and "-m" in tokens and tokens[tokens.index("-m") + 1:][:1] == ["glmc"]:
        return tokens[tokens.index("-m") + 2:]
    return None


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in documents():
        for number, line in shell_lines(path.read_text()):
            arguments = glmc_arguments(line)
            if arguments is not None:
                found.append((f"{path.relative_to(ROOT)}:{number}", arguments))
    return found


def mentioned_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in documents():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in INLINE_CODE.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{number}", match.group(1).split()[1:]))
    return found


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def parse(arguments: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(arguments)
    except SystemExit as exit:
        raise AssertionError(f"argparse refused it (exit {exit.code})") from None


def check_values(args: argparse.Namespace) -> None:
    """What `glmc COMMAND` checks before it does any work, beyond argparse."""
    if args.command == "train" and not (args.resume or args.config):
        build_config(args.preset, train_overrides(args))
    elif args.command == "train":
        for text in args.set:
            assert parse_override(text)[0] in config_keys() or text.startswith("method."), text
    elif args.command in ("bench", "tune"):
        build_config(args.preset, set_overrides(args))
    elif args.command == "calibrate":
        calibration_params(args.method, args.set)
    elif args.command == "reproduce" and not args.list:
        tables = load_tables(args.tables) if args.tables is None else None
        if tables is not None:
            assert args.table in tables, f"no table {args.table!r}"
            rows = {row.name for row in tables[args.table].rows}
            assert set(args.only) <= rows, f"no row {sorted(set(args.only) - rows)} in {args.table}"
        for text in args.set:
            build_config(None, dict([parse_override(text)]))


COMMANDS = documented_commands()


def test_the_documentation_shows_commands():
    where = {place.split(":")[0] for place, _ in COMMANDS}
    assert len(COMMANDS) >= 40 and {"README.md", "docs/getting-started.md"} <= where


@pytest.mark.parametrize("place,arguments", COMMANDS, ids=[place for place, _ in COMMANDS])
def test_documented_command_parses(place, arguments, monkeypatch):
    monkeypatch.delenv("GLMC_DATA_ROOT", raising=False)
    args = parse(arguments)
    check_values(args)


MENTIONS = mentioned_commands()


@pytest.mark.parametrize("place,words", MENTIONS, ids=[place for place, _ in MENTIONS])
def test_command_named_in_text_exists(place, words):
    parsers = subcommand_parsers()
    if words and words[0].isupper():  # `glmc COMMAND --help`: a placeholder for any command
        return
    assert words and words[0] in parsers, f"no command `glmc {' '.join(words[:1])}`"
    options = {flag for action in parsers[words[0]]._actions for flag in action.option_strings}
    for word in words[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"`glmc {words[0]}` has no option {word}"


def test_a_wrong_command_is_caught():
    """The checks fail where they should: a removed flag, an unknown preset, a bad --set key."""
    with pytest.raises(AssertionError):
        parse(["train", "--preset", "quickstart", "--no-such-flag"])
    with pytest.raises(Exception, match="preset"):
        check_values(parse(["train", "--preset", "cifar10-lt-if1000"]))
    with pytest.raises(Exception, match="method.not_an_option|not_an_option"):
        check_values(parse(["train", "--preset", "quickstart", "--set", "method.not_an_option=1"]))
    with pytest.raises(Exception, match="tua|tau"):
        check_values(parse(["calibrate", "x.pt", "--method", "tau-norm", "--set", "tua=0.5"]))
    assert glmc_arguments("torchrun --nproc_per_node 8 -m glmc train --resume runs/x") == ["train", "--resume", "runs/x"]
    assert glmc_arguments("PYTHONPATH=src glmc presets") == ["presets"]
    assert glmc_arguments("pip install glmc") is None


def test_presets_named_anywhere_exist():
    presets = set(load_presets())
    for path in documents():
        for name in re.findall(r"--preset[ =]([\w.-]+)", path.read_text()):
            if name.isupper() or name in {"NAME", "P", "PRESET"}:
                continue
            assert name in presets, f"{path.relative_to(ROOT)} names preset {name!r}, which does not exist"
