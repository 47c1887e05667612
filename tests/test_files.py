"""Atomic writes (`diptych.files`): the whole new file or the old one, never a partial file or a stray temp."""

import os

import pytest

from diptych.files import atomic_file, write_atomic


def temps(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


@pytest.mark.parametrize("fsync", [True, False])
def test_write_atomic_text_and_bytes(tmp_path, fsync):
    path = tmp_path / "out.txt"
    assert write_atomic(path, "héllo\r\nworld\n", fsync=fsync) == path
    assert path.read_bytes() == "héllo\r\nworld\n".encode()  # UTF-8, line ends as given
    write_atomic(path, b"\x00\x01", fsync=fsync)
    assert path.read_bytes() == b"\x00\x01" and temps(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("boom")
    assert path.read_text() == "old" and temps(tmp_path) == []


def test_a_missing_folder_is_an_error_not_a_stray_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "x.txt", "x")
    assert os.listdir(tmp_path) == []
