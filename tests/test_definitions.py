"""The one rerun rule (io/definitions.py): reuse the same finished result, rebuild on request, and
otherwise refuse naming what differs."""

from __future__ import annotations

import pytest

from ntk_selector.errors import UserError
from ntk_selector.io.definitions import canonical, describe_differences, read_state, reuse_or_refuse


def test_reuse_rebuild_or_refuse():
    mine = {"lr": 1e-4, "lora": {"rank": 8, "target_modules": ("q_proj", "v_proj")}, "path": None}
    saved = canonical(mine)  # as read back from JSON: the tuple is a list
    assert reuse_or_refuse(saved, mine, "x") is True
    assert reuse_or_refuse(None, mine, "x") is False  # nothing saved: build
    assert reuse_or_refuse(saved, mine, "x", ready=False) is False  # same definition, unfinished: build again
    other = {**saved, "lr": 3e-4, "lora": {"rank": 4, "target_modules": ["q_proj", "v_proj"]}}
    assert reuse_or_refuse(other, mine, "x", overwrite=True) is False
    with pytest.raises(UserError) as err:
        reuse_or_refuse(other, mine, "runs/a holds another run")
    msg = str(err.value)
    assert msg.startswith("runs/a holds another run (") and "lora.rank: 4 -> 8" in msg and "lr: 0.0003 -> 0.0001" in msg
    assert "--overwrite" in msg and "target_modules" not in msg


def test_describe_differences_flattens_and_names_missing_keys():
    assert (
        describe_differences({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "d": 3})
        == "a.b: 1 -> 2; c: 2 -> None; d: None -> 3"
    )


def test_read_state_tolerates_damage(tmp_path):
    path = tmp_path / "state.json"
    assert read_state(path) is None
    path.write_text('{"definition": {"a": 1}}')
    assert read_state(path) == {"definition": {"a": 1}}
    for damaged in ('{"definition": ', "[1, 2]", b"\xff\xfe"):
        path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
        assert read_state(path) is None
