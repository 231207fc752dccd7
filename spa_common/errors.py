"""The exception types for bad input, so a front end can report it as one line."""
from __future__ import annotations

from typing import Mapping


class SpaError(Exception):
    """Bad input or an unusable environment.

    The message is a single line that names the file (and the record inside
    it, where there is one) and what is wrong, e.g.
    ``annotations/instances_val2017.json: annotation 42: polygon has 2 points``.
    The CLI prints it without a traceback (unless ``--debug``) and exits 1.
    """


class ParamError(SpaError):
    """Bad input that is fixed through parameters of the call (a value given, or one to give).

    ``template`` holds ``{param}`` where each parameter is named, e.g.
    ``"{strides} 8,x: 'x' is not a power of two"``. The message names the library's own
    parameters (``strides 8,x: ...``); a front end that took them from options of its own
    renders the error with those names instead (``--scales 8,x: ...``) through ``named``.
    """

    def __init__(self, template: str, *params: str):
        self.template, self.params = template, params
        super().__init__(self.named({}))

    def named(self, names: Mapping[str, str]) -> str:
        """The message with each parameter called ``names[param]`` (its own name where absent)."""
        text = self.template
        for param in self.params:
            text = text.replace("{" + param + "}", names.get(param, param))
        return text
