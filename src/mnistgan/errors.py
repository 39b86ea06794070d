"""The errors a user can cause and fix: each carries a one-line message naming the key or file."""

EXIT_BAD_INPUT = 2  # every command and stage: bad arguments, params or input files -> one line on stderr, this code


class UserError(Exception):
    """Bad params, a missing or corrupt input, an unreachable tracking store: one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A params.yaml problem; the message names the key, the value and what is allowed."""


class InputError(UserError, RuntimeError):
    """A missing, corrupt or mismatched input file; the message names the file and the stage that makes it."""


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message says which and how to fix it."""
