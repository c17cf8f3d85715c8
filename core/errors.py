"""Errors a user can act on.

Every error raised to a ComfyUI user says where it happened (node, input), what was
expected and how to fix it, all in its message: that message is what the user sees.

How ComfyUI shows them (read in both runtimes' execution.py, the pinned early-2024 tree and
0.3.64): an exception raised while a node runs is caught by a plain `except Exception`, and
the `execution_error` message carries `exception_message` = str(err) (0.3.64 appends a newline,
plus memory tips for an out-of-memory error only), `exception_type` = the class's full name
(module + qualified name, e.g. `...core.errors.MissingModelError`) and the traceback; an
exception in a node's VALIDATE_INPUTS is caught the same way (`exception_during_validation`,
str(err) as the details). Neither runtime treats ValueError differently from any other
exception. These errors subclass ValueError because they are bad values (code that catches
ValueError catches them), not for ComfyUI's sake.
"""
from __future__ import annotations


def printable(text: str) -> str:
    """`text` with lone UTF-16 surrogates (half an emoji from a broken API client) written as
    backslash escapes: such a message cannot be encoded as UTF-8, and ComfyUI's logging of a failed
    node would then raise inside its own error handling and stop the prompt queue."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _rebuilt(cls: type, state: dict) -> "AtelierError":
    """An instance of `cls` with `state` as its fields, without calling its __init__ (whose
    arguments differ per subclass); its message is rendered from those fields."""
    err = cls.__new__(cls)
    err.__dict__.update(state)
    err.args = (err.render(),)
    return err


class AtelierError(ValueError):
    """An input or setup problem the user can fix.

    str(err) reads: "[Node] input 'name': problem. Expected: ... Fix: ..."
    """

    def __init__(self, problem: str, *, node: str | None = None, input: str | None = None,
                 expected: str | None = None, fix: str | None = None):
        self.problem, self.node, self.input = problem, node, input
        self.expected, self.fix = expected, fix
        super().__init__(self.render())

    def render(self) -> str:
        """The message from the fields: where, what, what was expected, how to fix it."""
        where = " ".join(p for p in (f"[{self.node}]" if self.node else "",
                                     f"input '{self.input}':" if self.input else "") if p)
        parts = [f"{where} {self.problem}".strip()]
        if self.expected:
            parts.append(f"Expected: {self.expected}.")
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return printable(" ".join(parts))

    def at(self, node: str, input: str | None = None) -> "AtelierError":
        """This error attributed to `node` (and to `input` when it names none), for core errors
        raised without a node; an error that already names its node is returned unchanged.

        The copy keeps the class and every field (a MissingModelError stays one, with its model
        id, file name, folder and URL)."""
        if self.node is not None:
            return self
        return _rebuilt(type(self), {**self.__dict__, "node": node, "input": self.input or input})

    def __reduce__(self):
        # pickle/copy through the fields: a subclass's __init__ takes other arguments than the message
        return _rebuilt, (type(self), dict(self.__dict__))


class MissingModelError(AtelierError):
    """A model file is not where ComfyUI looks for it; names the manifest entry and the folder."""

    def __init__(self, model_id: str, filename: str, folder: str, *, node: str | None = None,
                 input: str | None = None, url: str | None = None):
        self.model_id, self.filename, self.folder, self.url = model_id, filename, folder, url
        how = f"run `atelier models download {model_id}`"
        if url:
            how += f", or download {url}"
        how += f" and put it in ComfyUI/models/{folder}/{filename}"
        super().__init__(f"model file '{filename}' (manifest id '{model_id}') was not found in the '{folder}' model folder.",
                         node=node, input=input, fix=how + ".")
