"""The one exception type for a user's mistakes (a wrong option, a missing file), as opposed to bugs.

The command line prints a :class:`UserError` as one line, without a traceback (``--print_traceback`` or
``FSL_TRACEBACK=1`` shows it); any other exception keeps its traceback, since it is ours to fix. Raise it
with a message that says what is wrong and how to fix it.
"""


class UserError(ValueError):
    """A mistake in the user's options, configuration or files; the message says how to fix it."""
