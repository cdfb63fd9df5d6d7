"""The terminal view (rich): each input's text with its units on a background coloured by
score, the explained and predicted labels, and a legend of the scale."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.style import Style
from rich.text import Text

from explainserve.viewer.views import InputView, Row, colour


def _style(score: float, scale: float, valid: bool) -> Style:
    if not valid:
        return Style(color="bright_black", italic=True)
    r, g, b = colour(score, scale)
    # Dark text on light cells, white on saturated ones (luminance-based).
    light = 0.299 * r + 0.587 * g + 0.114 * b > 150
    return Style(bgcolor=f"rgb({r},{g},{b})", color="black" if light else "white")


def row_text(row: Row, scale: float) -> Text:
    """The text of one row: units coloured, the text between them plain."""
    text = Text()
    for piece in row.pieces:
        if piece.unit < 0:
            text.append(piece.text)
        else:
            text.append(piece.text, _style(piece.score, scale, piece.valid))
    return text


def legend(scale: float) -> Text:
    """`-max ... 0 ... +max` in the scale's colours."""
    text = Text("scale: ")
    text.append(f"{-scale:+.3g} ")
    steps = 5
    for k in range(-steps, steps + 1):
        r, g, b = colour(scale * k / steps, scale)
        text.append("  ", Style(bgcolor=f"rgb({r},{g},{b})"))
    text.append(f" {scale:+.3g}  (red: for, blue: against)")
    return text


def render_input(view: InputView) -> RenderableType:
    """One input: a header, one line per explained target (or continuation unit), a legend."""
    parts: list[RenderableType] = []
    header = Text(f"input {view.index}", style="bold")
    if view.predicted is not None:
        header.append(
            f"  predicted: {view.predicted.label} ({view.predicted.probability:.1%})",
            style="bold",
        )
    if view.causal:
        kind = "generated" if view.generated else "given"
        header.append(f"  continuation ({kind}): {view.continuation!r}")
    parts.append(header)
    for k, row in enumerate(view.rows):
        if view.causal:
            title = Text(f"  {row.title}: ", style="bold")
        else:
            prob = view.explained[k].probability if k < len(view.explained) else None
            extra = f" ({prob:.1%})" if prob is not None else ""
            title = Text(f"  explained: {row.title}{extra}: ", style="bold")
        parts.append(title + row_text(row, view.scale))
    parts.append(Text("  ") + legend(view.scale))
    return Group(*parts)


def print_views(views: list[InputView], console: Console) -> None:
    """Prints every input's view, a blank line between inputs."""
    for k, view in enumerate(views):
        if k:
            console.print()
        console.print(render_input(view))
