"""What the command line writes to a terminal: text a script chose, shown, never obeyed.

A run's stderr tail, error, output and code are the script's own text, and ``submit --wait``,
``show``, ``history`` and ``show-code`` print them. On a terminal, escape sequences in them
would be obeyed: a script could erase the lines above and draw a "succeeded" of its own, hide
text, retitle the window or, on some terminals, write the clipboard. So a terminal gets each
control character (but tab and newline), and each bidirectional override (which reorders what
is shown, as "trojan source" does), as a visible ``\\xNN``/``\\uNNNN`` escape. A pipe or a file
gets the text as it is (``show-code > script.py`` stays exact); ``--json`` escapes them anyway.
"""

import sys
from typing import Any, TextIO, cast

_CONTROLS = (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))
_BIDI = (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
SHOWN = str.maketrans({c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _BIDI})


class ShownText:
    """A terminal stream that shows control characters instead of writing them."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(text.translate(SHOWN))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...
        return getattr(self._stream, name)


def guard_terminals() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through :class:`ShownText` where they are
    terminals (logging handlers made later write through it too)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ShownText) and stream.isatty():
            setattr(sys, name, cast(TextIO, ShownText(stream)))
