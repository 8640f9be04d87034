"""The error of stage 1: a message that says what is missing."""


class Stage1Error(ValueError):
    """Stage 1 cannot run with what it was given; the message says what is missing."""
