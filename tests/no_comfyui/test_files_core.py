import pytest

from comfyui_atelier.core.files import atomic_path


def test_success_replaces_the_destination_in_one_step(tmp_path):
    dest = tmp_path / "out.json"
    dest.write_text("old")
    with atomic_path(dest) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
        assert dest.read_text() == "old"  # readers still see the old file while writing
    assert dest.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failure_leaves_the_destination_and_no_temporary_file(tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_images_by_id_keys_image_files_by_stem(tmp_path):
    """The one id rule (client, dataset tools and node, trainers): file stem, images only, no hidden files or
    folders, file-name order; every id that two files share is named in one error."""
    from comfyui_atelier.core.errors import AtelierError
    from comfyui_atelier.core.files import images_by_id
    for name in ("b.PNG", "a.jpg", " c .webp", "d.tiff", "notes.txt", "._a.png", ".hidden.png", "e.gif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    got = images_by_id(tmp_path)
    assert list(got) == ["c", "a", "b", "d", "e"]  # sorted by file name (" c .webp" first), ids stripped
    assert got["b"] == str(tmp_path / "b.PNG")
    assert images_by_id(tmp_path / "folder.png") == {}
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.bmp").write_bytes(b"x")
    with pytest.raises(AtelierError) as e:
        images_by_id(tmp_path, node="Atelier X", input="folder")
    msg = str(e.value)
    assert "a: a.jpg, a.png; b: b.PNG, b.bmp" in msg and "Atelier X" in msg and "'folder'" in msg, msg
