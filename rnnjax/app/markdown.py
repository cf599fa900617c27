"""Markdown tables, for the reports (`rnnjax.report`) and the benchmarks (`rnnjax.bench`).
Imports nothing beyond Python."""

from collections.abc import Sequence


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[object]],
                   right: Sequence[bool] | None = None) -> str:
    """A markdown table of cells as given (`str` of each); `right[i]`: column i is
    right-aligned (numbers)."""
    right = right or [False] * len(head)
    rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    lines = ["| " + " | ".join(map(str, line)) + " |" for line in [head, *rows]]
    return "\n".join([lines[0], rule, *lines[1:]])
