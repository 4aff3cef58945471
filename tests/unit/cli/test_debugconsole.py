"""`cocoon debug-console`: finding the guest's "shell exited" line in chunked output."""

from __future__ import annotations

from cocoon.cli.debugconsole import ExitScanner
from cocoon.wire.agent import DEBUG_EXIT_MARK


def test_output_passes_and_the_exit_line_ends_it() -> None:
    s = ExitScanner()
    assert s.feed(b"hello\r\n") == (b"hello\r\n", None)
    assert s.feed(b"bye\r\n" + DEBUG_EXIT_MARK + b"3]\r\n") == (b"bye\r\n", 3)


def test_the_exit_line_split_across_chunks_is_found() -> None:
    s = ExitScanner()
    line = b"out\r\n" + DEBUG_EXIT_MARK + b"0]\r\n"
    shown = b""
    status = None
    for i in range(len(line)):
        out, status = s.feed(line[i : i + 1])
        shown += out
        if status is not None:
            break
    assert status == 0 and shown == b"out\r\n"


def test_text_like_the_start_of_the_mark_is_shown_in_the_end() -> None:
    s = ExitScanner()
    out1, st1 = s.feed(b"x" + DEBUG_EXIT_MARK[:5])
    out2, st2 = s.feed(b"... not the mark")
    assert st1 is None and st2 is None
    assert out1 + out2 == b"x" + DEBUG_EXIT_MARK[:5] + b"... not the mark"
