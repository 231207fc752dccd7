"""One exception type for bad input, so a front end can report it as one line."""
from __future__ import annotations


class SpaError(Exception):
    """Bad input or an unusable environment.

    The message is a single line that names the file (and the record inside
    it, where there is one) and what is wrong, e.g.
    ``annotations/instances_val2017.json: annotation 42: polygon has 2 points``.
    The CLI prints it without a traceback (unless ``--debug``) and exits 1.
    """

