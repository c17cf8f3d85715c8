"""The shared plumbing every family goes through: images, the file cache, the size budget."""
import os
import threading
import time

import numpy as np
import pytest
import torch

from comfyui_atelier.core import budget, images
from comfyui_atelier.core.cache import FileCache
from comfyui_atelier.core.errors import AtelierError
from comfyui_atelier.core.finite import NonFinitePixels


def test_image_batch_shapes_and_errors():
    assert images.image_batch(torch.zeros(4, 5)).shape == (1, 4, 5, 1)
    assert images.image_batch(torch.zeros(4, 5, 3)).shape == (1, 4, 5, 3)
    assert images.image_batch(torch.zeros(2, 4, 5)).shape == (2, 4, 5, 1)
    x = torch.zeros(2, 4, 5, 3)
    assert images.image_batch(x).data_ptr() == x.data_ptr()  # no copy
    with pytest.raises(AtelierError, match=r"\[N\] input 'img'.*shape \(1, 2, 3, 7\)"):
        images.image_batch(torch.zeros(1, 2, 3, 7), node="N", input="img")
    with pytest.raises(AtelierError, match="empty image batch"):
        images.image_batch(torch.zeros(0, 4, 4, 3))
    with pytest.raises(AtelierError, match="not an image tensor"):
        images.image_batch(np.zeros((4, 4, 3)))


def test_to_rgb_channel_rules():
    gray = torch.full((1, 2, 2, 1), 0.25)
    assert torch.equal(images.to_rgb(gray), torch.full((1, 2, 2, 3), 0.25))
    rgba = torch.tensor([0.2, 0.4, 0.6, 0.5]).expand(1, 2, 2, 4)
    expect_white = torch.tensor([0.6, 0.7, 0.8])
    assert torch.allclose(images.to_rgb(rgba)[0, 0, 0], expect_white)
    assert torch.allclose(images.to_rgb(rgba, background=0.0)[0, 0, 0], torch.tensor([0.1, 0.2, 0.3]))
    la = torch.tensor([0.2, 0.0]).expand(1, 1, 1, 2)  # fully transparent gray -> background
    assert torch.equal(images.to_rgb(la, background=(0.0, 1.0, 0.0))[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    rgb = torch.rand(1, 3, 3, 3)
    assert images.to_rgb(rgb) is rgb
    assert images.to_rgb(rgb * 3).max() == 1


def test_to_uint8_matches_save_image():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.7, -0.2, 0.3])
    want = np.clip(255.0 * x.numpy(), 0, 255).astype(np.uint8)  # ComfyUI SaveImage's conversion
    assert np.array_equal(images.to_uint8(x), want)
    assert images.to_uint8(torch.tensor([float("nan")]))[0] == 0
    a = (np.arange(256, dtype=np.uint8)).reshape(16, 16, 1)
    assert np.array_equal(images.to_uint8(images.from_uint8(a)), a)  # a PNG round-trips exactly


def _save_image_u8(a: np.ndarray) -> np.ndarray:
    """ComfyUI Save Image's conversion, written out: x 255, clip, NaN to 0, truncate."""
    return np.nan_to_num(np.clip(a * np.float32(255), 0, 255), nan=0.0).astype(np.uint8)


def test_unit_range_test_is_exact_at_its_edges():
    """The in-range fast path of to_uint8 (no clip, no finite sum) is taken exactly for +0.0..1.0."""
    inside = np.array([0.0, 1e-45, 0.5, np.nextafter(np.float32(1), np.float32(0)), 1.0], np.float32)
    assert images._in_unit_range(inside) and images._in_unit_range(np.empty(0, np.float32))
    for bad in (-0.0, -1e-45, np.nextafter(np.float32(1), np.float32(2)), 2.0, np.nan, -np.nan, np.inf, -np.inf,
                np.finfo(np.float32).max):
        a = np.full((3, 4), 0.25, np.float32)
        a[2, 1] = bad
        assert not images._in_unit_range(a), bad
    strided = np.full((4, 6), 0.5, np.float32)  # a strided view is read as it is
    strided[1, 4] = 1.5
    assert not images._in_unit_range(strided[:, ::2])


@pytest.mark.parametrize("rows", [None, 1, 7, 64, 10**6])
@pytest.mark.parametrize("finite", [False, True, "refuse"])
def test_to_uint8_into_gives_save_image_bytes_in_and_out_of_range(rows, finite):
    rng = np.random.default_rng(5)
    unit = rng.random((97, 61, 3), dtype=np.float32)
    unit[0, 0], unit[1, 1] = 0.0, 1.0
    wide = unit * np.float32(1.4) - np.float32(0.2)  # some strips out of range, some in
    wide[:40] = unit[:40]
    for img in (unit, wide):
        out = images.to_uint8_into(img, np.empty(img.shape, np.uint8), rows=rows, finite=finite)
        assert np.array_equal(out, _save_image_u8(img))
        assert np.array_equal(images.to_uint8(img, finite=finite), _save_image_u8(img))  # no out, whole
    if finite is not True:  # one bad value in an otherwise 0..1 strip: refused, or 0 as Save Image gives it
        for bad in (np.nan, np.inf, -np.inf):
            img = unit.copy()
            img[50, 30, 1] = bad
            if finite == "refuse":
                with pytest.raises(NonFinitePixels):
                    images.to_uint8_into(img, np.empty(img.shape, np.uint8), rows=rows, finite=finite)
            else:
                out = images.to_uint8_into(img, np.empty(img.shape, np.uint8), rows=rows, finite=finite)
                assert np.array_equal(out, _save_image_u8(img))


def test_strips_are_cache_sized_alone_and_large_beside_other_threads(monkeypatch):
    from comfyui_atelier.core import parallel as P
    img = np.zeros((4000, 512, 3), np.float32)
    assert images.strip_rows(img) == images.single_strip_bytes() // (512 * 3 * 4)
    assert images.strip_rows(np.zeros((5, 10**7), np.float32)) == 1
    assert P.pool().submit(images.strip_rows, img).result(timeout=30) == images.PARALLEL_STRIP_BYTES // (512 * 12)
    monkeypatch.setattr(P, "MIN_SPLIT_PIXELS", 0)
    monkeypatch.setattr(P, "cpus", lambda: 2)
    seen = {}
    P.for_row_bands(lambda r0, r1: seen.setdefault(r0, images.strip_rows(img)), 100, 10)
    assert set(seen.values()) == {images.PARALLEL_STRIP_BYTES // (512 * 12)} and len(seen) == 2
    assert images.strip_rows(img) == images.single_strip_bytes() // (512 * 12)  # the caller's flag is put back
    with pytest.raises(ValueError):
        P.for_row_bands(lambda r0, r1: (_ for _ in ()).throw(ValueError("x")), 100, 10)
    assert not P.in_parallel()


def test_the_single_strip_size_is_timed_once_and_is_one_of_the_choices(monkeypatch):
    from comfyui_atelier.core import parallel as P
    monkeypatch.setattr(images, "_single_strip", [])
    calls = []
    real = images._time_strip_choices

    def timed():
        calls.append(1)
        return real(side=128, rounds=2)

    monkeypatch.setattr(images, "_time_strip_choices", timed)
    picks = list(P.pool().map(lambda _: images.single_strip_bytes(), range(4))) + [images.single_strip_bytes()]
    assert len(calls) == 1 and len(set(picks)) == 1 and picks[0] in images.STRIP_CHOICES
    # the timing picks the faster choice: make one of them slow and it is never picked
    slow = images.STRIP_CHOICES[0]
    real_into = images.to_uint8_into

    def into(image, out, *, rows=None, **kw):
        if rows == max(1, slow // (image.shape[1] * 12)):
            time.sleep(0.002)
        return real_into(image, out, rows=rows, **kw)

    monkeypatch.setattr(images, "to_uint8_into", into)
    assert real(side=128, rounds=2) == images.STRIP_CHOICES[1]


def test_rgb_uint8_is_to_rgb_then_to_uint8():
    x = torch.rand(2, 3, 4, 4)
    assert np.array_equal(images.rgb_uint8(x), images.to_uint8(images.to_rgb(x)))
    assert images.rgb_uint8(x).shape == (2, 3, 4, 3)


def test_file_cache_reloads_changed_file(tmp_path):
    p = tmp_path / "m.bin"
    p.write_bytes(b"one")
    cache, calls = FileCache(max_items=2), []

    def load(path):
        calls.append(path)
        return open(path, "rb").read()

    assert cache.get(p, load) == b"one" and cache.get(p, load) == b"one" and len(calls) == 1
    p.write_bytes(b"three")  # new size (and mtime): loaded again
    assert cache.get(p, load) == b"three" and len(calls) == 2
    assert cache.peek(p) == b"three"
    for i in range(3):  # LRU bound
        q = tmp_path / f"x{i}"
        q.write_bytes(b"x")
        cache.get(q, load)
    assert cache.peek(p) is None and len(cache.values()) == 2


def test_file_cache_concurrent_loads_share_one(tmp_path):
    p = tmp_path / "m.bin"
    p.write_bytes(b"x")
    cache, calls = FileCache(), []

    def slow(path):
        calls.append(1)
        time.sleep(0.05)
        return object()

    got = []
    ts = [threading.Thread(target=lambda: got.append(cache.get(p, slow))) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(calls) == 1 and len({id(g) for g in got}) == 1


def test_file_cache_folder_stamp_sees_new_file(tmp_path):
    d = tmp_path / "predictor"
    d.mkdir()
    (d / "config.json").write_text("{}")
    cache = FileCache()
    first = cache.get(d, lambda path: object())
    (d / "model.safetensors").write_bytes(b"12345")
    assert cache.get(d, lambda path: object()) is not first


def test_budget_refuses_before_allocating(monkeypatch):
    budget.check_size(8192, 8192)  # the default allows 8192^2
    with pytest.raises(AtelierError) as e:
        budget.check_size(111, 2_220_000, node="Atelier Remove Background", input="image", what="the PoolNet input")
    msg = str(e.value)
    assert "[Atelier Remove Background] input 'image'" in msg and "246.4 megapixels" in msg
    assert budget.PIXELS_ENV in msg
    with pytest.raises(AtelierError, match="GiB at once"):
        budget.check_size(4096, 4096, batch=300, node="N", input="batch")
    monkeypatch.setenv(budget.PIXELS_ENV, "1")
    with pytest.raises(AtelierError, match="budget of 1.0 megapixels"):
        budget.check_size(1001, 1000)
    monkeypatch.setenv(budget.PIXELS_ENV, "nan")  # a bad setting falls back to the default
    budget.check_size(8192, 8192)
    for bad in (0, -3, 2.5, float("nan"), "x"):
        with pytest.raises(AtelierError, match="positive whole-number"):
            budget.check_size(bad, 10, node="N", input="h")


def test_progress_is_a_no_op_outside_comfyui():
    from comfyui_atelier.nodes._progress import Progress
    p = Progress(3)
    p.step()
    p.set(2)
    p.callback()(3, 3)


def test_folder_walk_follows_links_once_and_caps_depth(tmp_path):
    from comfyui_atelier.core import folders
    root = tmp_path / "models"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.pth").write_bytes(b"")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.pth").write_bytes(b"")
    (root / "top.safetensors").write_bytes(b"")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a link loop must end
    names = [rel for rel, _ in folders.walk(root)]
    assert names == ["a/b/x.pth", "top.safetensors"]
    deep = root
    for i in range(12):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "deep.pth").write_bytes(b"")
    assert not any(n.endswith("deep.pth") for n, _ in folders.walk(root))
    assert [n for n, _ in folders.list_files([root, tmp_path / "missing"], [".PTH"])] == ["a/b/x.pth"]
    assert not (tmp_path / "missing").exists()  # listing creates nothing
    stop = [n for n, _ in folders.walk(root, stop=lambda d: d.endswith("/b"))]
    assert stop == ["a/b", "top.safetensors"]


def test_error_messages_are_always_utf8_encodable():
    # a lone surrogate sent through the API must not make the message unprintable: ComfyUI's logging
    # of the failed node would raise inside its error handling and stop the queue
    err = AtelierError("cannot read the colour '#ff\ud800ff'", node="Atelier Remove Background", input="background")
    text = str(err)
    text.encode("utf-8")  # raises UnicodeEncodeError if a surrogate is left
    assert "#ff\\ud800ff" in text and text.startswith("[Atelier Remove Background] input 'background'")
    assert str(err.at("Other")) == text  # the attributed copy renders the same way


def test_list_files_lists_model_folders_once(tmp_path):
    from comfyui_atelier.core import folders
    root = tmp_path / "aesthetic"
    (root / "predictor").mkdir(parents=True)
    (root / "predictor" / "config.json").write_text("{}")
    (root / "predictor" / "model.safetensors").write_bytes(b"")
    (root / "head.pth").write_bytes(b"")

    def is_model_dir(d):
        return os.path.isfile(os.path.join(d, "config.json"))

    assert [n for n, _ in folders.list_files([root], [".pth", ".safetensors"], stop=is_model_dir)] == \
        ["head.pth", "predictor"]
    assert [n for n, _ in folders.list_files([root], [".pth", ".safetensors"])] == \
        ["head.pth", "predictor/model.safetensors"]


def test_jsontext_refuses_deep_nesting_before_json_recurses():
    from comfyui_atelier.core import jsontext
    assert jsontext.loads('{"a": [1, {"b": "[[[[["}]}') == {"a": [1, {"b": "[[[[["}]}  # brackets in strings
    with pytest.raises(ValueError, match="nested more than 32 levels deep"):
        jsontext.loads("[" * 100_000)
    assert jsontext.loads("[" * 40 + "]" * 40, limit=64) is not None


def test_no_comfyui_tests_import_no_node_family_at_module_level():
    """pytest imports every test module before it runs any test: a tests/no_comfyui module that imports
    comfyui_atelier.nodes at its top level loads the node families before ComfyUI is importable, and the
    in-process tier then finds them recorded as failed (FAILED_FAMILIES). Node imports belong inside a test."""
    import ast
    from pathlib import Path
    bad = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "comfyui_atelier.nodes" or n.startswith("comfyui_atelier.nodes.") for n in names):
                bad.append(f"{path.name}:{node.lineno}")
    assert not bad, f"module-level imports of comfyui_atelier.nodes in tests/no_comfyui: {bad}"
