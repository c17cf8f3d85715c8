"""core/errors.py: the message shape, and `at()` attributing a core error to a node without losing
what kind of error it is."""
from __future__ import annotations

import copy
import pickle

import pytest

from comfyui_atelier.core.errors import AtelierError, MissingModelError


def test_message_names_node_input_expected_and_fix():
    e = AtelierError("the mask is empty.", node="Atelier Matte", input="mask", expected="a mask with some 1s",
                     fix="draw the object")
    assert str(e) == "[Atelier Matte] input 'mask': the mask is empty. Expected: a mask with some 1s. Fix: draw the object"
    assert isinstance(e, ValueError)


def test_at_keeps_a_missing_model_error_and_its_fields():
    e = MissingModelError("poolnet-resnet50", "poolnet.safetensors", "saliency", input="model_name",
                          url="https://example.invalid/poolnet.safetensors")
    got = e.at("Atelier Saliency Loader", "ignored: the error names its input")
    assert type(got) is MissingModelError
    assert (got.model_id, got.filename, got.folder, got.url) == (
        "poolnet-resnet50", "poolnet.safetensors", "saliency", "https://example.invalid/poolnet.safetensors")
    assert (got.node, got.input) == ("Atelier Saliency Loader", "model_name")
    msg = str(got)
    assert msg.startswith("[Atelier Saliency Loader] input 'model_name': model file 'poolnet.safetensors'")
    assert "atelier models download poolnet-resnet50" in msg and "https://example.invalid/poolnet.safetensors" in msg
    assert str(e) == msg.replace("[Atelier Saliency Loader] ", "")  # the original is unchanged
    assert e.node is None


def test_at_fills_the_input_only_when_missing_and_keeps_a_named_node():
    e = AtelierError("bad size.", expected="64..4096", fix="resize")
    got = e.at("Atelier Node", "width")
    assert type(got) is AtelierError and got.input == "width" and got.expected == "64..4096" and got.fix == "resize"
    assert str(got) == "[Atelier Node] input 'width': bad size. Expected: 64..4096. Fix: resize"
    named = AtelierError("x", node="Other")
    assert named.at("Atelier Node") is named


class _CustomError(AtelierError):
    def __init__(self, count: int):
        self.count = count
        super().__init__(f"{count} things", fix="fewer")


def test_at_keeps_any_subclass_with_its_own_fields():
    got = _CustomError(3).at("Atelier Node")
    assert type(got) is _CustomError and got.count == 3 and str(got) == "[Atelier Node] 3 things Fix: fewer"


@pytest.mark.parametrize("clone", [copy.copy, copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))])
def test_copy_and_pickle_keep_the_subclass(clone):
    e = MissingModelError("m", "m.safetensors", "checkpoints", node="N", url="https://example.invalid/m")
    got = clone(e)
    assert type(got) is MissingModelError and str(got) == str(e) and got.url == e.url and got.node == "N"
