"""The one exception users see: bad input, stated in one line with what to do."""


class UserError(Exception):
    """Bad input or state the user can fix.

    The CLI prints ``amazon-visual: error: <message>`` and exits with status 2,
    without a traceback. The message names the input and says what to do.
    """
