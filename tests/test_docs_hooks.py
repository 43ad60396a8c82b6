"""The documentation site's build hooks: equations become MathML, the CLI reference is the parser's; clean pages."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from glmc.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "hooks"


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arithmatex_spans_become_mathml_and_the_rest_is_left_alone():
    mathml = load_hook("mathml")
    html = ('<p>with <span class="arithmatex">\\(\\alpha = 1 - (T/T_{\\max})^2\\)</span> and <code>$x$</code></p>'
            '<div class="arithmatex">\\[\\mathcal{L} = \\alpha\\, \\mathcal{L}_{\\text{CE}}\\]</div>')
    out = mathml.on_page_content(html)
    assert out.count("<math") == 2 and 'display="inline"' in out and 'display="block"' in out
    assert "arithmatex" not in out and "<code>$x$</code>" in out  # code is not math
    assert "&#x003B1;" in out or "α" in out  # alpha, as MathML writes it


def test_the_cli_reference_names_every_command_and_option():
    reference = load_hook("cli_reference").reference()
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in action.choices.items():
        assert f"## `glmc {name}`" in reference
        for option in (o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")):
            assert f"`{option}`" in reference, (name, option)


def test_the_cli_reference_replaces_only_its_marker(monkeypatch):
    hook = load_hook("cli_reference")
    monkeypatch.setenv("GLMC_DATA_ROOT", "/somewhere/private")
    page = hook.on_page_markdown(f"# Reference\n\n{hook.MARKER}\n", page=None)
    assert page.startswith("# Reference") and hook.MARKER not in page and "## `glmc train`" in page
    assert "/somewhere/private" not in page  # defaults as a user without the variable sees them
    assert hook.on_page_markdown("no marker here", page=None) == "no marker here"


def test_no_page_holds_control_characters():
    """A tab or form feed in a page is almost always a LaTeX command that lost its backslash (\\text -> tab + "ext",
    \\frac -> form feed + "rac") when the page was written from a Python string; the site would render it as text."""
    pages = [*ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    for page in pages:
        bad = [(number, line) for number, line in enumerate(page.read_text().splitlines(), 1)
               if any(ord(c) < 32 for c in line)]
        assert not bad, f"{page.relative_to(ROOT)}:{bad[0][0]}: {bad[0][1]!r}"
