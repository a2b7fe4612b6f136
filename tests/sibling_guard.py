"""Fail any test that reads the folder beside the checkout (`../shared`, where the reference
material sat while the project was built): the suite must run in a clone with nothing beside it.

conftest.py installs the audit hook for the whole session; test_self_contained.py proves it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SIBLING = str(Path(__file__).resolve().parents[2] / "shared")
_EVENTS = ("open", "os.listdir", "os.scandir")


class OutsideReadError(RuntimeError):
    """A test opened or listed a file of the folder beside the checkout."""


def _hook(event: str, args: tuple) -> None:
    if event not in _EVENTS or not args or args[0] is None or isinstance(args[0], int):
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if path == SIBLING or path.startswith(SIBLING + os.sep):
        raise OutsideReadError(f"{path}: tests read only files of the repository "
                               "(tests/golden, resources/), never the folder beside it")


_installed = False


def install() -> None:
    """Add the audit hook once (audit hooks cannot be removed: it stays for the session)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
