"""The terminal view through a real pseudo-terminal: colours follow the scores' signs, the
labels and the legend are printed, and the progress bar is fed by ExplainStream."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terminal import run_in_pty
from viewer_refs import class_terms, concept_scale, predicted_label, softmax

from explainserve.viewer.terminal import BAR_CELLS

TEXTS = ["The food was cold and the waiter was rude.", "I loved the friendly staff."]
# An SGR sequence and the text it styles.
SGR = re.compile(r"\x1b\[([0-9;]*)m([^\x1b]*)")


def backgrounds(output: str) -> list[tuple[str, tuple[int, int, int]]]:
    """(text, background RGB) of every segment written on a true-colour background."""
    out = []
    for params, text in SGR.findall(output):
        codes = params.split(";")
        for k in range(len(codes) - 4):
            if codes[k : k + 2] == ["48", "2"] and text:
                r, g, b = (int(c) for c in codes[k + 2 : k + 5])
                out.append((text, (r, g, b)))
                break
    return out


def check_unit_colours(output: str, response: dict[str, Any]) -> None:
    """Every unit of every row of every input was written, in text order, on the background its
    score's sign says: red (r > b) for positive, blue (b > r) for negative, white for 0."""
    expected = []
    for e in response["explanations"]:
        cols = len(e["units"])
        scores = e["scores"]["values"]
        for r in range(len(e["targets"])):
            units = sorted(
                zip(e["units"], scores[r * cols : (r + 1) * cols], strict=True),
                key=lambda us: us[0].get("char_start", 0),
            )
            expected += [(u["text"], s) for u, s in units]
    # The legend's swatches are on coloured backgrounds too: they are blank ("  ").
    seen = [(text, rgb) for text, rgb in backgrounds(output) if text.strip()]
    assert [text for text, _ in seen] == [text for text, _ in expected]
    for (text, (r, _g, b)), (_, score) in zip(seen, expected, strict=True):
        if score > 0:
            assert r > b, (text, score)
        elif score < 0:
            assert b > r, (text, score)
        else:
            assert r == b == 255, (text, score)


def test_units_coloured_by_score_in_a_terminal(tmp_path: Path, server_address: str) -> None:
    out = tmp_path / "out.json"
    output = run_in_pty(
        [
            sys.executable,
            "-m",
            "explainserve.cli",
            "explain",
            *TEXTS,
            "--server",
            server_address,
            "--model",
            "bert",
            "--method",
            "sobol",
            "--param",
            "n_points=16",
            "--json",
            str(out),
        ]
    )
    response = json.loads(out.read_text())
    check_unit_colours(output, response)
    plain = SGR.sub(lambda m: m.group(2), output)
    for k, e in enumerate(response["explanations"]):
        label = e["targets"][0]["label"]
        assert f"input {k}  predicted: {label} (" in plain
        assert f"explained: {label} (" in plain
    assert plain.count("scale: ") == len(TEXTS)
    # The progress bar followed ExplainStream's progress up to the last forward pass.
    total = sum(int(e["counters"]["forward_passes"]) for e in response["explanations"])
    assert "explaining" in plain
    assert f"{total}/{total} forward passes" in plain


#: The glyphs of a concept bar (full and half cells) and of the residual's.
BAR_GLYPHS = set("█▌▐▒")


@dataclass(frozen=True)
class Segment:
    """A run of a screen line written in one foreground colour."""

    column: int
    text: str
    rgb: tuple[int, int, int] | None


def screen_lines(output: str) -> list[tuple[str, list[Segment]]]:
    """Each line's plain text and its runs with their true-colour foreground (None: default)."""
    out = []
    for line in output.split("\r\n"):
        plain, segments, rgb = "", [], None
        for params, text in SGR.findall("\x1b[m" + line):
            codes = params.split(";")
            k = 0
            while k < len(codes):
                if codes[k] in ("", "0", "39"):
                    rgb = None
                elif codes[k] in ("38", "48"):
                    # An extended colour's own parameters: 5;N or 2;R;G;B.
                    skip = 3 if codes[k + 1] == "5" else 5
                    if codes[k : k + 2] == ["38", "2"]:
                        rgb = tuple(int(c) for c in codes[k + 2 : k + 5])  # type: ignore[assignment]
                    k += skip - 1
                k += 1
            if text:
                segments.append(Segment(len(plain), text, rgb))
                plain += text
        out.append((plain, segments))
    return out


def concepts_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "explainserve.cli", "explain", *args]


def test_concept_bars_in_a_terminal(tmp_path: Path, server_address: str) -> None:
    """Per input and explained class: the output's terms, the top concepts by |raw
    contribution| in order with their labels, values, shares and activations, each bar on its
    sign's side of the axis in its sign's colour and as long as |contribution| on the input's
    scale, the concepts left out, the residual's bar and share."""
    out = tmp_path / "concepts.json"
    top = 3
    output = run_in_pty(
        concepts_cli(
            *TEXTS, "--server", server_address, "--model", "bert", "--concepts", "pca8",
            "--target", "negative", "--target", "positive", "--top", str(top),
            "--json", str(out),
        )
    )  # fmt: skip
    response = json.loads(out.read_text())
    assert response["concept_set"] == "pca8"
    lines = screen_lines(output)
    plain = [text for text, _ in lines]
    assert len(response["explanations"]) == len(TEXTS)
    for n, e in enumerate(response["explanations"]):
        at = plain.index(
            f"input {n}  predicted: {predicted_label(e)} ({max(softmax(e['logits'])):.1%})"
            f"  reconstruction error {e['reconstruction_error']:.1%}"
        )
        assert plain[at + 1] == f"  text: {TEXTS[n]}"
        scale = concept_scale(e)
        for terms in class_terms(e, response["concept_labels"], top):
            head = plain.index(
                f"  explained: {terms.label} ({terms.probability:.1%})  residual share "
                f"{terms.residual_share:.1%}",
                at,
            )
            assert plain[head + 1].startswith(f"    logit {terms.output:+.3g} = concepts ")
            assert plain[head + 3 + top].split() == [
                "…",
                str(terms.others),
                "more",
                "concepts",
                f"±{terms.others_share:.1%}",
            ]
            screen = [*lines[head + 3 : head + 3 + top], lines[head + 4 + top]]
            for term, (text, segments) in zip(terms.bars, screen, strict=True):
                numbers = [f"{term.value:+.3g}", f"{term.share:+.1%}"]
                if term.activation is not None:
                    numbers.append(f"{term.activation:+.3g}")
                assert text.strip().startswith(term.label), (term, text)
                assert text.split()[-len(numbers) :] == numbers, (term, text)
                (bar,) = [s for s in segments if set(s.text) <= BAR_GLYPHS]
                axis = text.index("│")
                halves = sum(2 if c in "█▒" else 1 for c in bar.text)
                assert abs(halves - 2 * BAR_CELLS * abs(term.value) / scale) <= 1, (term, bar)
                r, _g, b = bar.rgb or (0, 0, 0)
                # For the class: red, right of the axis; against it: blue, left of it.
                if term.value > 0:
                    assert r > b, (term, bar)
                    assert bar.column == axis + 1, (term, bar)
                else:
                    assert b > r, (term, bar)
                    assert bar.column + len(bar.text) == axis, (term, bar)
        # The input's largest term fills its half.
        end = plain.index("", at)
        bars = [s for _, segs in lines[at:end] for s in segs if set(s.text) <= BAR_GLYPHS]
        assert max(sum(2 if c in "█▒" else 1 for c in s.text) for s in bars) == 2 * BAR_CELLS
    assert plain.count("  share: contribution / (Σ |concept contributions| + |residual|)") == 2


def test_concept_heat_map_in_a_terminal(tmp_path: Path, server_address: str) -> None:
    """`--concept K`: the words coloured by their effect on concept K's activation, under the
    concept's label and activation, with the model's prediction."""
    out = tmp_path / "concept.json"
    output = run_in_pty(
        concepts_cli(
            *TEXTS, "--server", server_address, "--model", "bert", "--concepts", "pca8",
            "--concept", "price", "--concept", "0", "--json", str(out),
        )
    )  # fmt: skip
    response = json.loads(out.read_text())
    check_unit_colours(output, response)
    plain = SGR.sub(lambda m: m.group(2), output)
    for k, e in enumerate(response["explanations"]):
        assert [t["label"] for t in e["targets"]] == ["price", "cold food"]
        assert f"input {k}  predicted: {predicted_label(e)} (" in plain
        price, cold = e["concept_activations"][3], e["concept_activations"][0]
        assert f"explained: price (activation {price:+.3g}): " in plain
        assert f"explained: cold food (activation {cold:+.3g}): " in plain
    assert plain.count("scale: ") == len(TEXTS)
