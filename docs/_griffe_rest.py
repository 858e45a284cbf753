"""A Griffe extension for the API reference (mkdocs.yml): xprune's reST docstrings read as Markdown.

The docstrings are numpy style with reST markup. Before a docstring is parsed this extension

- turns ``:math:`x``` into ``\\(x\\)`` and a ``.. math::`` directive into a ``\\[ ... \\]`` block
  (pymdownx.arithmatex, rendered by MathJax where the reader is online);
- turns the cross-reference roles (``:func:``, ``:class:``, ``:mod:``, ...) into code spans
  (``~a.b`` shows ``b``, as in Sphinx);
- gives a ``Notes`` header to a paragraph of prose that closes a ``Parameters`` section
  (after a blank line, not indented), which the numpy parser would read as parameters.

It changes nothing in the source files.
"""

from __future__ import annotations

import logging
import re

import griffe

logger = logging.getLogger("mkdocs.plugins.xprune_notes")

_LISTS = {"parameters", "other parameters", "attributes", "keyword arguments"}
_ENTRY = re.compile(r"^\*{0,2}[A-Za-z_][\w.]*(\s*,\s*\*{0,2}[A-Za-z_][\w.]*)*\s*(:.*)?$")


_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):`(~?)([^`]+)`")


def _xref(m: re.Match) -> str:
    target = m.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"


def math_blocks(text: str) -> str:
    """``.. math:: X`` (X on the line and/or indented below it) -> a ``\\[ X \\]`` display block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)\.\. math::\s*(.*)$", lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, body = m.group(1), [m.group(2)] if m.group(2).strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if lines[i].strip() or (body and i + 1 < len(lines) and lines[i + 1].startswith(indent + " ")):
                body.append(lines[i].strip())
            i += 1
        out += [f"{indent}\\[", *(f"{indent}{b}" for b in body if b), f"{indent}\\]", ""]
    return "\n".join(out)


def markdown(text: str) -> str:
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
    return _XREF_ROLE.sub(_xref, math_blocks(text))


def with_notes(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    section = None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", nxt.strip()):
            section = line.strip().lower()
        elif (section in _LISTS and line and not line[0].isspace() and i and not lines[i - 1].strip()
              and not re.fullmatch(r"-{3,}", line.strip()) and not _ENTRY.match(line)):
            out += ["Notes", "-----"]
            section = "notes"
        out.append(line)
    return "\n".join(out)


class RestDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None:
            return
        fixed = with_notes(obj.docstring.value)
        if fixed != obj.docstring.value:
            logger.info("xprune_docstrings: a Notes header added in the docstring of %s", obj.path)
        obj.docstring.value = markdown(fixed)
