"""The one exception type for bad user input.

Anything the user can fix (a bad file, column, month, flag or config key) raises `UserError`
with one line that names the culprit. The CLI and the study scripts print that line and exit
with code 2, before anything is written.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    exit_code = 2


class Interrupted(Exception):
    """A study stopped before every planned trial was recorded (Ctrl-C: Ray Tune catches the
    first SIGINT and returns as if done). Printed as one line, exit code 130; the rows written
    so far stay and `--resume` runs the rest."""

    exit_code = 130
