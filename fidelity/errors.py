"""The one exception type a user sees as a single line and exit code 2."""


class FidelityError(Exception):
    """Bad input or an unusable model/reference: reported as one line, exit 2."""
