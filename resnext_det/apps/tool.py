"""How every command line runs (tools/*.py): the known third-party warnings filtered for its
process, and a user's error (:data:`resnext_det.config.USER_ERRORS`) said as one line
``PROG: error: ...`` on stderr with exit status 2, no traceback."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

from .._warnings import filter_known_third_party_warnings
from ..config import USER_ERRORS

__all__ = ["run_tool", "tool_error"]


def tool_error(prog: str, message: Any) -> None:
    """Print ``PROG: error: MESSAGE`` on stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run_tool(prog: str, main: Callable[[Optional[Sequence[str]]], Any],
             argv: Optional[Sequence[str]] = None) -> int:
    """Run a command line's ``main(argv)``; returns the exit status: ``main``'s if an int, else 0,
    and 2 after ``PROG: error:`` for one of ``USER_ERRORS``."""
    filter_known_third_party_warnings()  # a command line: its process, not the library, gets the filters
    try:
        status = main(argv)
    except USER_ERRORS as e:
        tool_error(prog, e)
        return 2
    return status if isinstance(status, int) else 0
