"""The one exception type for bad input; the CLI turns it into a one-line message and exit 2."""


class UserError(ValueError):
    """Bad input from the user: a wrong shape, value, name, config key or data file.

    The message is a single line that names the problem and how to fix it.
    """
