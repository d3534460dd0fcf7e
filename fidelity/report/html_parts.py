"""What every HTML page of the workbench shares: style, escaping, numbers, embedded plots."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.82em} td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left;font-family:monospace}
.ok,.good{background:#e5f5e0}.diverged,.nonfinite,.shape_mismatch,.not_run,.inconsistent,.bad{background:#fcbba1}
.bad_input{background:#fee6ce} .note{color:#555;font-size:.9em}
.meta td{text-align:left} img{max-width:100%;border:1px solid #eee}
del{background:#fcbba1;text-decoration:line-through} ins{background:#c7e9c0;text-decoration:none}
.transcript{font-family:Georgia,serif;line-height:1.5;max-width:60em}
"""

# Marks the body with how many images rendered, for the browser test.
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var rendered = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-rendered', rendered + '/' + images.length);
});
"""


def page(title: str, body: str) -> str:
    """A whole self-contained page."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}<script>{CHECK_SCRIPT}</script></body></html>\n")


def escape(text) -> str:
    return html.escape(str(text))


def number(value, column: str = "") -> str:
    """A table cell's text: '-' for missing, cosines to nine places, other floats to three digits."""
    if value is None:
        return "-"
    if column == "shape":
        return "x".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.9f}" if column.endswith("cosine") else f"{value:.3g}"
    return str(value)


def image(figure) -> str:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<p><img alt='plot' src='data:image/png;base64,{data}'></p>"


def table(records: list[dict], columns: list[str] | None = None, css=None) -> str:
    """Records as an HTML table; `css(column, value)` may give a cell its class."""
    if not records:
        return "<p>none</p>"
    columns = columns or list(records[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = []
    for record in records:
        cells = []
        for column in columns:
            value = record.get(column)
            cls = css(column, value) if css else None
            cells.append(f"<td{f' class={escape(cls)!r}' if cls else ''}>{escape(number(value, column))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
