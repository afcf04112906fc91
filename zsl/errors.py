"""The one exception type for mistakes a user can fix (bad file, flag or value).

Command-line entry points catch it, print its message (one sentence naming the
file/flag and the fix) and exit with code 2 -- never a traceback.
"""


class UserError(Exception):
    """A user-fixable error; ``str(err)`` is a single sentence naming the culprit and the fix."""


EXIT_USER_ERROR = 2
