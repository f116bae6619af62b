"""The project's user-facing error type."""


class DSen2CRError(Exception):
    """A problem with the user's input, files or settings, reported as one line without a traceback.

    Messages name the file (or argument) and what is wrong with it.
    """
