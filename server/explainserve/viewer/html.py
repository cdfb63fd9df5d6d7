"""The HTML view: one self-contained page (inline CSS, no script, no external asset) with each
input's text heat-mapped per explained target, the score of a unit shown on hover (its `title`),
and, for causal LMs, the continuation units x input units matrix as a heat map; or, for concept
explanations, each explained class's top concepts as signed bars with the residual's."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import jinja2

from explainserve import __version__
from explainserve.viewer.views import ConceptInputView, InputView, bar_colour, bar_length, colour


def _css_colour(score: float | None, scale: float) -> str:
    if score is None:
        return "#e8e8e8"
    r, g, b = colour(score, scale)
    return f"rgb({r},{g},{b})"


def _text_colour(score: float | None, scale: float) -> str:
    if score is None:
        return "#888"
    r, g, b = colour(score, scale)
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#fff"


def _bar_colour(value: float) -> str:
    """A concept bar's CSS colour."""
    r, g, b = bar_colour(value)
    return f"rgb({r},{g},{b})"


def render_html(
    views: Sequence[InputView] | Sequence[ConceptInputView], *, model: str, method: str
) -> str:
    """The page for `views` (one section per input)."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: (resources.files("explainserve.viewer") / "templates" / name).read_text(
                encoding="utf-8"
            )
        ),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bg"] = _css_colour
    env.filters["fg"] = _text_colour
    env.filters["bar"] = _bar_colour
    env.globals["bar_length"] = bar_length
    legend = [k / 5 for k in range(-5, 6)]
    return env.get_template("page.html.j2").render(
        views=views,
        concepts=any(isinstance(view, ConceptInputView) for view in views),
        model=model,
        method=method,
        version=__version__,
        legend=legend,
    )
