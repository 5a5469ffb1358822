"""``tandem up``'s output never stops it: once the reader of its pipe is gone (``| tee`` killed by
the same Ctrl-C), lines are dropped instead of raising ``BrokenPipeError``."""

from __future__ import annotations

import io
import os

from tandem.launcher import print_line


def test_a_closed_pipe_mutes_the_output_instead_of_raising() -> None:
    read_end, write_end = os.pipe()
    out = io.TextIOWrapper(os.fdopen(write_end, "wb"), encoding="utf-8")
    try:
        print_line("first", out)
        assert os.read(read_end, 100) == b"first\n"
        os.close(read_end)  # the reader is gone
        print_line("second", out)  # BrokenPipeError inside: muted
        print_line("third", out)  # goes to /dev/null
        out.flush()  # the interpreter's last flush would not raise either
    finally:
        out.close()


def test_a_closed_stream_is_ignored() -> None:
    out = io.StringIO()
    out.close()
    print_line("lost", out)
