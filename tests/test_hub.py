"""diptych.hub: a hub id is checked before any load, so nothing waits on the network's retry loop."""

import pytest

from diptych import hub


def test_hub_ids_and_paths(tmp_path):
    assert hub.looks_like_hub_id("openai/clip-vit-base-patch32")
    for name in ("shapes", "./org/name", "/abs/path", "~/x/y", "a/b/c", str(tmp_path), ""):
        assert not hub.looks_like_hub_id(name), name


def test_local_paths_pass_through(tmp_path):
    assert hub.check_hub_access(tmp_path, what="x") is False
    assert hub.check_hub_access(tmp_path, what="x", local_files_only=True) is True


@pytest.mark.parametrize("offline", [True, False])
def test_a_cached_copy_is_used_when_the_hub_is_out_of_reach(monkeypatch, offline):
    monkeypatch.setattr(hub, "hub_offline", lambda: offline)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: "refused")
    monkeypatch.setattr(hub, "in_hub_cache", lambda repo, repo_type="model": True)
    assert hub.check_hub_access("org/model", what="the model") is True  # read the cache, no network


def test_not_cached_and_out_of_reach_fails_in_one_line(monkeypatch):
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: "https://hf.co: ConnectError: refused")
    monkeypatch.setattr(hub, "in_hub_cache", lambda repo, repo_type="model": False)
    with pytest.raises(hub.HubUnavailableError) as info:
        hub.check_hub_access("org/model", what="the model", fix="pass a folder")
    message = str(info.value)
    assert "\n" not in message and "'org/model'" in message and "cannot be reached" in message
    assert message.endswith("pass a folder")


def test_reachable_hub_loads_as_usual(monkeypatch):
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    assert hub.check_hub_access("org/model", what="the model") is False
