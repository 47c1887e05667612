"""Atomic writes and resumable logs (`diptych.files`): never a partial file, a stray temp or a torn line."""

import json
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


def test_jsonl_log_cuts_a_torn_tail_locks_and_appends_whole_lines(tmp_path):
    from diptych.errors import InputError
    from diptych.files import JsonlLog, complete_lines

    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n{"id": "b"}\n{"id": "c", "tru')  # a crash mid-append
    assert [n for n, _ in complete_lines(path)] == [1, 3]  # the blank line and the torn tail are skipped
    with JsonlLog(path, error=InputError, writer="test run", busy="try later") as log:
        assert path.read_bytes().endswith(b'{"id": "b"}\n')  # the torn tail was cut on opening
        with pytest.raises(InputError, match=r"another test run is writing .*; try later"):
            JsonlLog(path, error=InputError, writer="test run", busy="try later")
        log.append({"id": "d", "value": 1})
    assert [json.loads(line)["id"] for _, line in complete_lines(path)] == ["a", "b", "d"]
    assert complete_lines(tmp_path / "missing.jsonl") == []
    JsonlLog(path).close()  # the lock went with the first log
