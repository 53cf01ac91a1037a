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
