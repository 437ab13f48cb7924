"""Errors a user can cause. The CLI prints them as one line on stderr and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a path, a name, a file, a missing backend. Never a bug in the code."""
