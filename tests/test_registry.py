import threading

import pytest
import torch

from precise.store.registry import ModelRegistry, RegistryError


def test_register_latest_and_lineage(tmp_path):
    registry = ModelRegistry(tmp_path)
    assert registry.latest("universal") is None
    weights = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    v1 = registry.register("universal", weights, {"metrics": {"loss": 1.0}})
    v2 = registry.register("universal", weights, {"parent_version": v1.version})
    tt = registry.register("targeted", weights, {"warm_started_from": v2.ref}, task="like")
    assert (v1.version, v2.version) == ("000001", "000002")
    assert registry.latest("universal").version == "000002"
    assert registry.latest("targeted", "like").metadata["warm_started_from"] == "universal/000002"
    assert tt.ref == "targeted/like/000001"
    loaded = registry.load_state_dict(registry.get("universal", "000001"))
    assert torch.equal(loaded["w"], weights["w"])


def test_errors(tmp_path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="needs a task"):
        registry.register("targeted", {"w": torch.zeros(1)}, {})
    with pytest.raises(RegistryError, match="unknown model kind"):
        registry.latest("foo")
    with pytest.raises(RegistryError, match="no model universal/000009"):
        registry.get("universal", "000009")


def test_concurrent_writers_get_distinct_versions(tmp_path):
    registry = ModelRegistry(tmp_path)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        registry.register("universal", {"w": torch.full((2,), float(i))}, {"writer": i}).version))
        for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [f"{n:06d}" for n in range(1, 7)]
    for version in results:  # each version holds the weights its writer registered
        mv = registry.get("universal", version)
        assert registry.load_state_dict(mv)["w"][0].item() == mv.metadata["writer"]
    assert not list((tmp_path / "models" / "universal").glob(".staging-*"))
    assert registry.latest("universal").version == "000006"


def test_explicit_moves_are_recorded_and_registration_does_not_undo_them(tmp_path):
    registry = ModelRegistry(tmp_path)
    w = {"w": torch.zeros(1)}
    for _ in range(3):
        registry.register("universal", w, {"parent_version": getattr(registry.latest("universal"), "ref", None)})
    back = registry.move_latest("universal", "000001", action="rollback", note="bad data in 2 and 3")
    assert back["moved"] and (back["from"], back["to"], back["withdrawn"]) == ("000003", "000001", ["000002", "000003"])
    assert registry.latest("universal").version == "000001" and "@" in back["by"] and back["at"].endswith("Z")
    assert registry.withdrawn("universal") == ["000002", "000003"]
    # a training that ran during the rollback (trained from withdrawn 000003): registered, not LATEST
    late = registry.register("universal", w, {"parent_version": "universal/000003"})
    assert late.version == "000004" and registry.latest("universal").version == "000001"
    # a targeted model warm-started from a withdrawn universal one does not become LATEST either
    registry.register("targeted", w, {"warm_started_from": "universal/000002"}, task="like")
    assert registry.latest("targeted", "like") is None
    # a training from LATEST after the move moves it forwards as usual
    assert registry.register("universal", w, {"parent_version": "universal/000001"}).version == "000005"
    assert registry.latest("universal").version == "000005"
    # promoting a withdrawn version reinstates it (forwards or back) and is recorded too
    up = registry.move_latest("universal", "000003")
    assert up["moved"] and registry.latest("universal").version == "000003" and "000003" not in registry.withdrawn(
        "universal")
    assert not registry.move_latest("universal", "000003")["moved"]  # already LATEST: nothing recorded
    assert [(m["action"], m["from"], m["to"]) for m in registry.moves("universal")] == [
        ("rollback", "000003", "000001"), ("promote", "000005", "000003")]
    with pytest.raises(RegistryError, match="no model universal/000042"):
        registry.move_latest("universal", "000042")
    assert registry.latest("universal").version == "000003"
