"""The one exception type for user mistakes.

The command line turns a :class:`PeftshieldError` into a one-line message and a non-zero exit;
anything else is a bug and keeps its traceback.
"""


class PeftshieldError(Exception):
    """A problem with the user's input (file, folder, option, data), reported in one line."""
