"""The HTML view: one self-contained page (inline CSS, no script, no external asset) with each
input's text heat-mapped per explained target, the score of a unit shown on hover (its `title`),
and, for causal LMs, the continuation units x input units matrix as a heat map."""

from __future__ import annotations

from importlib import resources

import jinja2

from explainserve import __version__
from explainserve.viewer.views import InputView, colour


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


def render_html(views: list[InputView], *, model: str, method: str) -> str:
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
    legend = [k / 5 for k in range(-5, 6)]
    return env.get_template("page.html.j2").render(
        views=views, model=model, method=method, version=__version__, legend=legend
    )
