"""The terminal view (rich): each input's text with its units on a background coloured by
score, the explained and predicted labels, and a legend of the scale; for concept explanations,
each class's output decomposed, its top concepts as signed bars and the residual's share."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.style import Style
from rich.table import Table
from rich.text import Text

from explainserve.viewer.views import (
    ConceptBar,
    ConceptInputView,
    InputView,
    Row,
    TargetConcepts,
    bar_colour,
    bar_length,
    colour,
)

#: Cells of a bar's half (against on the left of the axis, for on the right).
BAR_CELLS = 10
#: The axis between a bar's halves.
AXIS = "│"


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


def _header(view: InputView | ConceptInputView) -> Text:
    """`input N  predicted: LABEL (P%)`."""
    header = Text(f"input {view.index}", style="bold")
    if view.predicted is not None:
        header.append(
            f"  predicted: {view.predicted.label} ({view.predicted.probability:.1%})",
            style="bold",
        )
    return header


def render_input(view: InputView) -> RenderableType:
    """One input: a header, one line per explained target (or continuation unit), a legend."""
    parts: list[RenderableType] = []
    header = _header(view)
    if view.causal:
        kind = "generated" if view.generated else "given"
        header.append(f"  continuation ({kind}): {view.continuation!r}")
    parts.append(header)
    for row in view.rows:
        if view.causal:
            title = Text(f"  {row.title}: ", style="bold")
        else:
            extra = f" ({row.detail})" if row.detail else ""
            title = Text(f"  explained: {row.title}{extra}: ", style="bold")
        parts.append(title + row_text(row, view.scale))
    parts.append(Text("  ") + legend(view.scale))
    return Group(*parts)


def bar(item: ConceptBar, scale: float) -> Text:
    """A signed bar in half-cell steps, left of the axis when against, right when for, in the
    heat maps' blue or red (the residual's shaded)."""
    halves = round(bar_length(item.value, scale) * 2 * BAR_CELLS)
    if item.value != 0:
        halves = max(halves, 1)  # every shown term keeps a visible sign
    full, half = divmod(halves, 2)
    r, g, b = bar_colour(item.value)
    style = Style(color=f"rgb({r},{g},{b})")
    glyph = "▒" if item.residual else "█"
    text = Text()
    if item.value < 0:
        drawn = "▐" * half + glyph * full
        text.append(" " * (BAR_CELLS - len(drawn)))
        text.append(drawn, style)
        text.append(AXIS + " " * BAR_CELLS, "bright_black")
    else:
        drawn = glyph * full + "▌" * half
        text.append(" " * BAR_CELLS + AXIS, "bright_black")
        text.append(drawn, style)
        text.append(" " * (BAR_CELLS - len(drawn)))
    return text


def render_target(target: TargetConcepts, view: ConceptInputView) -> RenderableType:
    """One explained class: its output's terms, then a table of its top concepts' bars and
    the residual's."""
    title = Text(f"  explained: {target.title}", style="bold")
    if target.detail:
        title.append(f" ({target.detail})", style="bold")
    title.append(f"  residual share {target.residual_share:.1%}", style="bold")
    terms = Text(f"    {target.equation(view.output_name)}")
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
    # Only the labels wrap in a narrow terminal: the bars and numbers keep their width.
    table.add_column("concept", max_width=60)
    table.add_column(f"{'against':>{BAR_CELLS}} {'for':<{BAR_CELLS}}", no_wrap=True)
    for name in ("contribution", "share", "activation"):
        table.add_column(name, justify="right", no_wrap=True)
    for item in [*target.bars, target.residual_bar]:
        if item.residual and target.others:
            # The concepts left out, between the top ones and the residual.
            table.add_row(
                Text(target.others_label, style="italic"), "", "", f"±{target.others_share:.1%}"
            )
        table.add_row(
            Text(item.label, style="italic" if item.residual else ""),
            bar(item, view.scale),
            f"{item.value:+.3g}",
            f"{item.share:+.1%}",
            f"{item.activation:+.3g}" if item.activation is not None else "",
        )
    return Group(title, terms, Padding(table, (0, 0, 0, 4)))


def render_concepts(view: ConceptInputView) -> RenderableType:
    """One input of ExplainConcepts: a header with the reconstruction error, each explained
    class's terms and bars, and what the bars and shares mean."""
    header = _header(view)
    header.append(f"  reconstruction error {view.reconstruction_error:.1%}")
    parts: list[RenderableType] = [header, Text(f"  text: {view.text}")]
    parts += [render_target(target, view) for target in view.targets]
    parts.append(
        Text(
            f"  full bar: {view.scale:.3g} (red: for the class, blue: against)\n"
            "  share: contribution / (Σ |concept contributions| + |residual|)",
            style="bright_black",
        )
    )
    return Group(*parts)


def print_views(views: Sequence[InputView | ConceptInputView], console: Console) -> None:
    """Prints every input's view, a blank line between inputs."""
    for k, view in enumerate(views):
        if k:
            console.print()
        if isinstance(view, ConceptInputView):
            console.print(render_concepts(view))
        else:
            console.print(render_input(view))
