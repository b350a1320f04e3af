"""Write a benchmark's Markdown table into its own section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

HEADER = "# Benchmarks\n\nEvery table sits between markers written by the script it names; rerun the script to refresh it.\n"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` (or append)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
