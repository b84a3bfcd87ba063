"""The project's error for bad input: a user's file, flag, config value or checkpoint.

Command-line entry points print it as one line, `error: <what>: <why and what to do>`, and
exit with `exit_code`; every other exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """Something the user gave is wrong; the message says what and what to do about it."""
  exit_code = 1


class FlagError(InputError):
  """A command-line flag is missing, malformed or conflicts with another (exit status 2)."""
  exit_code = 2


class DiskFullError(InputError):
  """Not enough disk space for what a command writes."""
