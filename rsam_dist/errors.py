"""The one exception type that means "the user must fix something".

The CLI prints a `UserError` as a single line on stderr and exits 2; anything else that escapes a
command is a failure during the run and exits 1.
"""


class UserError(Exception):
    """Bad input: a malformed or misspelt file, a missing dataset, an unreachable cluster.

    The message is one line that says what is wrong and how to fix it.
    """
