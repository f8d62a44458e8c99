"""The one base class of the errors a user can fix.

Every entry point reports a ``UserError`` as one ``error:`` line on stderr and exits with code 2, so each
module's error class for bad input (a flag, a file, a route, the run directory) subclasses it: ``main`` then
maps one type to exit 2. It lives in ``core`` because the model routes raise such errors too, and ``core``
imports nothing from ``src``.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message names what to fix. Reported as one ``error:`` line, exit code 2."""
