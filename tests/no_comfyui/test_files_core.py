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
