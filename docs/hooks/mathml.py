"""Equations rendered when the site is built, as MathML: no script, no font download, no network.

pymdownx.arithmatex (generic mode) finds the `$...$` and `$$...$$` spans, with Markdown's own rules
for code and escapes; this hook turns each one into MathML with latex2mathml, which every current
browser renders natively.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

# what arithmatex's generic mode writes: <span class="arithmatex">\(...\)</span>, <div class="arithmatex">\[...\]</div>
INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.DOTALL)
DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.DOTALL)


def to_mathml(tex: str, display: str) -> str:
    return convert(html.unescape(tex).strip(), display=display)


def on_page_content(content: str, **kwargs) -> str:
    content = DISPLAY.sub(lambda m: f'<div class="math">{to_mathml(m.group(1), "block")}</div>', content)
    return INLINE.sub(lambda m: to_mathml(m.group(1), "inline"), content)
