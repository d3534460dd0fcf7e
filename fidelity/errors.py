"""The exceptions a user sees as a single line, each with its own exit status."""


class FidelityError(Exception):
    """Bad input or an unusable model/reference: reported as one line, exit 2."""


class CandidateCrash(Exception):
    """The candidate raised while it ran: its crash (exit 3, traceback in the crash log), never a divergence."""
