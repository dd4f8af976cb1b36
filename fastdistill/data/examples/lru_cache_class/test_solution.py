import pytest
from solution import LRUCache

def test_eviction_order():
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2

def test_update_and_default():
    cache = LRUCache(1)
    cache.put("k", 1)
    cache.put("k", 2)
    assert cache.get("k") == 2 and len(cache) == 1
    assert cache.get("zz", "none") == "none"
    with pytest.raises(ValueError):
        LRUCache(0)
