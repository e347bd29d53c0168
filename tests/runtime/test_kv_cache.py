"""KVCache slots and KVStep bounds against a plain reference: what a pass binds as past, and where
its present entries land, under every bound (prefix, window, full, gather)."""
import numpy as np
import pytest

from dsocr.runtime.errors import CacheOverflowError, InputError
from dsocr.runtime.kv_cache import WINDOW_BUCKET, KVCache
from dsocr.runtime.rope import attention_mask, slot_mask

L, H, HD, S, B = 2, 2, 4, 40, 4


@pytest.mark.parametrize("policy", ["window", "full", "gather"])
def test_random_passes_match_a_reference(policy):
    rng = np.random.default_rng(0)
    cache = KVCache(L, H, HD, S, batch=B, policy=policy)
    ref = [[[] for _ in range(B)] for _ in range(L)]  # ref[layer][slot]: list of [H, hd] key rows
    for it in range(60):
        op = rng.random()
        if op < 0.15:  # a slot refilled
            b = int(rng.integers(B))
            cache.reset(b)
            for layer in ref:
                layer[b] = []
            slots, t = [b], int(rng.integers(1, 6))
        else:
            slots = sorted(rng.choice(B, size=int(rng.integers(1, B + 1)), replace=False).tolist())
            t = 1
        if max(len(ref[0][b]) for b in slots) + t > S:
            with pytest.raises(CacheOverflowError):
                cache.step(slots, t)
            for b in slots:
                cache.reset(b)
                for layer in ref:
                    layer[b] = []
            continue
        step = cache.step(slots, t)
        for i in range(L):
            pk, pv = step.past(i)
            assert pk.flags.c_contiguous and pk.shape[:2] == (len(slots), step.past_len)
            for r, b in enumerate(slots):
                n = len(ref[i][b])
                assert step.starts[r] == n and n <= step.past_len
                if n:
                    np.testing.assert_array_equal(pk[r, :n], np.stack(ref[i][b]))
            new = rng.standard_normal((len(slots), t, H, HD)).astype(np.float32)
            sk, sv = step.present(i)
            assert sk.shape == new.shape and sk.flags.c_contiguous
            sk[...] = new
            sv[...] = -new
            for r, b in enumerate(slots):
                ref[i][b] += list(new[r])
        step.commit()
    for i in range(L):
        for b in range(B):
            n = len(ref[i][b])
            assert cache.lengths[b] == n
            if n:
                np.testing.assert_array_equal(cache.key[i][b, :n], np.stack(ref[i][b]))
                np.testing.assert_array_equal(cache.value[i][b, :n], -np.stack(ref[i][b]))


def test_bounds_and_their_past_length():
    cache = KVCache(L, H, HD, S, batch=B)
    cache.lengths[:] = [3, 10, 0, 5]
    assert cache.step([1], 1).past_len == 10  # prefix: no copy, a view of the cache
    assert np.shares_memory(cache.step([1], 1).past(0)[0], cache.key[0])
    w = cache.step([0, 1, 3], 1)
    assert w.bound == "window" and w.past_len == S and not np.shares_memory(w.past(0)[0], cache.key[0])
    big = KVCache(L, H, HD, 1000, batch=B)
    big.lengths[:] = [3, 70, 0, 5]
    assert big.step([0, 1], 1).past_len == 2 * WINDOW_BUCKET  # the longest slot + 1, rounded up
    full = KVCache(L, H, HD, S, batch=B, policy="full")
    full.lengths[:] = [3, 10, 0, 5]
    f = full.step([0, 1, 2], 1)
    assert f.bound == "full" and f.past_len == S and np.shares_memory(f.past(0)[0], full.key[0])
    assert full.step([0, 1, 3], 1).bound == "gather"  # not consecutive rows
    with pytest.raises(InputError):
        cache.step([1, 1], 1)
    with pytest.raises(InputError):
        KVCache(L, H, HD, S, policy="sideways")


def test_device_bound_only_counts():
    """policy "device" (the backend keeps the entries): P = the longest slot, no host past or staging."""
    cache = KVCache(L, H, HD, S, batch=B, policy="device")
    cache.lengths[:] = [3, 10, 0, 5]
    assert cache.step([2], 1).bound == "prefix"
    d = cache.step([0, 1, 3], 1)
    assert d.bound == "device" and d.past_len == 10 and d.starts.tolist() == [3, 10, 5]
    with pytest.raises(InputError, match="device"):
        d.past(0)
    with pytest.raises(InputError, match="device"):
        d.present(0)
    d.commit()
    assert cache.lengths.tolist() == [4, 11, 0, 6]
    assert not any(a.any() for a in cache.key + cache.value)


def test_slot_mask_hides_what_a_slot_does_not_own():
    m = slot_mask(np.array([2, 0, 3]), 3, 2)  # [3, 1, 2, 5]
    visible = m[:, 0] == 0
    assert visible[0].tolist() == [[1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    assert visible[1].tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    np.testing.assert_array_equal(slot_mask(np.array([4]), 4, 3), attention_mask(4, 3))
