"""The project's one user-facing error: something the user can fix (a bad input file, bad params).

Its own module so that any layer can raise it without importing the CLI plumbing; ``components.cli``
prints it as one line and exits with status 2."""

from __future__ import annotations


class UserError(RuntimeError):
    """An error the user can fix (bad input file, bad params): printed without a traceback, exit 2."""
