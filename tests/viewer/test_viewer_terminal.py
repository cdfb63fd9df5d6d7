"""The terminal view through a real pseudo-terminal: colours follow the scores' signs, the
labels and the legend are printed, and the progress bar is fed by ExplainStream."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

TEXTS = ["The food was cold and the waiter was rude.", "I loved the friendly staff."]
# An SGR sequence and the text it styles.
SGR = re.compile(r"\x1b\[([0-9;]*)m([^\x1b]*)")


def run_in_pty(args: list[str], columns: int = 200) -> str:
    """Runs `args` with stdin, stdout and stderr on a new pseudo-terminal `columns` wide (a
    true-colour xterm) and returns everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(TERM="xterm-256color", COLORTERM="truecolor", COLUMNS=str(columns))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode()


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
    # Every unit of every input, in text order, on the background its score's sign says:
    # red (r > b) for positive, blue (b > r) for negative, white for 0.
    expected = []
    for e in response["explanations"]:
        units = sorted(
            zip(e["units"], e["scores"]["values"], strict=True),
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
