"""What a step kind's section is made of: the `Section` a kind's module defines, and the small HTML
builders sections share (every text is escaped here; plots come from datagen.report.plots)."""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from datagen.report import plots
from datagen.report.flags import Figure

if TYPE_CHECKING:
    from datagen.report.view import RunView

KEPT_DROPPED = {"kept": plots.KEPT_COLOUR, "dropped": "#D55E00"}


class Section:
    """How the report, `datagen inspect` and the dataset card show one step kind's summary (the
    dict its Step.summarize returned, as the manifest keeps it). Every method gets one step's
    summary; the defaults show any summary as plain figures, so a kind without a section of its
    own is still shown. Subclass it in datagen/report/sections/<kind>.py and register the
    instance in datagen.report.sections.SECTIONS under the kind's `stage:` name.

    key, title: the report section (its HTML id, [a-z]+, and heading) the step's part goes in;
      steps whose sections share a key are shown together, in pipeline order.
    """

    key = "other"
    title = "Other stage figures"

    def headline(self, summary: dict[str, Any]) -> str:
        """One line of the step's main figures (report overview, `datagen inspect`, the card); '' for none."""
        return ""

    def html(self, label: str, summary: dict[str, Any], view: "RunView") -> str:
        """The step's part of its report section (escaped HTML, may be '' to show nothing).
        `view` gives the run's rows and output for figures the summary does not hold."""
        text = json.dumps(summary, indent=1, sort_keys=True, default=str)
        return f"<details><summary>{escape(label)}</summary><pre>{escape(text)}</pre></details>"

    def card_lines(self, label: str, summary: dict[str, Any]) -> list[str]:
        """The step's Markdown lines in the dataset card: a heading, the summary as YAML right
        under it (readers parse that block), then the headline."""
        headline = self.headline(summary)
        dumped = yaml.safe_dump(summary, sort_keys=False).rstrip()
        return ["", f"### {label}", "", "```yaml", dumped, "```", *(["", headline] if headline else [])]

    def trust(self, summary: dict[str, Any]) -> list[Figure]:
        """The step's rows in the trust section (datagen.report.flags); [] for a step without any."""
        return []

    def kept_errors(self, stage: dict[str, Any]) -> int:
        """Rows the step recorded an error on but kept (on_error: keep): alive, but never passed.
        `stage` is a step's totals (datagen.run.stats.summarize) with its `summary`."""
        return 0


# ---- HTML builders ------------------------------------------------------------------------------

def figures(pairs: list[tuple[str, Any]]) -> str:
    """(name, value) pairs as a definition list."""
    items = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>" for k, v in pairs)
    return f'<dl class="figures">{items}</dl>'


def scalar_figures(summary: dict[str, Any]) -> str:
    """The summary's plain (not dict or list) values as figures, underscores read as spaces."""
    return figures([(k.replace("_", " "), v) for k, v in summary.items() if not isinstance(v, (dict, list))])


def figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>"


def plot_row(*items: str) -> str:
    """Figures side by side (empty strings are left out)."""
    return '<div class="plots">' + "".join(f for f in items if f) + "</div>"


def table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    """A table; the columns in `numeric` are right-aligned."""
    head = "".join(f'<th class="num">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{escape(str(c))}</td>' if i in numeric else f"<td>{escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def histogram(values: np.ndarray, edges: np.ndarray) -> list[float]:
    return [float(c) for c in np.histogram(values, bins=edges)[0]]


def edge_labels(edges: np.ndarray, digits: int) -> list[str]:
    return [f"{a:.{digits}f}-{b:.{digits}f}" for a, b in zip(edges[:-1], edges[1:])]


def heading(label: str, detail: str = "") -> str:
    return f"<h3>{escape(label)}{' (' + escape(detail) + ')' if detail else ''}</h3>"
