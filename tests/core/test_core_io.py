"""Atomic writes and strict JSON reading."""

import os
import stat

import pytest

from vstar.core.errors import InputError
from vstar.core.io import atomic_write_text, read_json


def test_atomic_write_gives_a_normal_file_mode_and_leaves_no_temp_file(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_read_json_names_the_line_of_a_duplicate_key(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{\n  "a": 1,\n  "a": 2\n}\n')
    with pytest.raises(InputError, match="duplicate key 'a'") as err:
        read_json(path)
    assert err.value.line == 3 and str(path) in str(err.value)
