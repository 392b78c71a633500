"""The latents cache: encoded once per split, reused without the encoder, keyed by the stage-1 checkpoint's
hash, rebuilt (with a warning) when a file is corrupt or does not fit, looked up by content."""

import os

import pytest
import torch

from genlab.data.base import DataInfo
from genlab.data.latents import (LatentCache, LatentCacheWarning, LatentTable, checkpoint_digest, content_keys,
                                 write_atomic)

LATENT = DataInfo(name="toy_vq8", kind="image", shape=(1, 2, 2), levels=8)


def _splits(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randint(0, 17, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
            for s, n in (("train", 40), ("val", 10), ("test", 12))}


def _encode(x):
    """A deterministic 'first stage': 2x2 block sums mod 8, a (B, 1, 2, 2) grid of codes."""
    return (torch.nn.functional.avg_pool2d(x.float(), 2) * 4).long() % 8


class Counting:
    def __init__(self):
        self.examples = 0

    def __call__(self, x):
        self.examples += len(x)
        return _encode(x)


def _refuse(x):
    raise AssertionError("the encoder was called: the cached latents were not reused")


def _cache(root, splits=None):
    return LatentCache(root, "toy", splits or _splits(), batch_size=16)


def test_each_split_is_encoded_once_and_reused_without_the_encoder(tmp_path):
    encode = Counting()
    keys, codes = _cache(tmp_path).load("a" * 16, encode, LATENT)
    assert encode.examples == 62 and len(keys) == len(codes) == 62
    assert sorted(p.name for p in (tmp_path / ("a" * 16)).iterdir()) == ["toy_test.pt", "toy_train.pt", "toy_val.pt"]
    torch.testing.assert_close(codes, torch.cat([_encode(x) for x in _splits().values()]))
    again_keys, again = _cache(tmp_path).load("a" * 16, _refuse, LATENT)  # a later run over the same stage 1
    assert torch.equal(again_keys, keys) and torch.equal(again, codes)


def test_a_changed_checkpoint_gets_a_new_key_and_its_own_latents(tmp_path):
    ckpt = tmp_path / "best.ckpt"
    torch.save({"w": torch.zeros(3)}, ckpt)
    first = checkpoint_digest(ckpt)
    torch.save({"w": torch.ones(3)}, ckpt)
    second = checkpoint_digest(ckpt)
    assert len(first) == 16 and int(first, 16) >= 0 and first != second
    _cache(tmp_path).load(first, Counting(), LATENT)
    encode = Counting()
    _cache(tmp_path).load(second, encode, LATENT)
    assert encode.examples == 62  # the old stage 1's latents are not read for the new one


def test_no_key_means_encoded_in_memory_and_nothing_written(tmp_path):
    encode = Counting()
    LatentCache(tmp_path, "toy", _splits()).load(None, encode, LATENT)
    assert encode.examples == 62 and not any(tmp_path.iterdir())
    LatentCache(None, "toy", _splits()).load("b" * 16, encode, LATENT)
    assert encode.examples == 124


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_images", "out_of_range", "wrong_shape"])
def test_a_corrupt_or_mismatched_file_is_rebuilt_with_a_warning_never_used(tmp_path, damage):
    key = "c" * 16
    _cache(tmp_path).load(key, Counting(), LATENT)
    path = tmp_path / key / "toy_val.pt"
    stored = torch.load(path, weights_only=True)
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "other_images":
        torch.save({**stored, "keys": stored["keys"] + 1}, path)
    elif damage == "out_of_range":
        torch.save({**stored, "codes": stored["codes"] + 8}, path)
    else:
        torch.save({**stored, "codes": stored["codes"][:, :, :1]}, path)
    encode = Counting()
    with pytest.warns(LatentCacheWarning, match="toy_val.pt"):
        _, codes = _cache(tmp_path).load(key, encode, LATENT)
    assert encode.examples == 10  # only the damaged split is re-encoded
    torch.testing.assert_close(codes, torch.cat([_encode(x) for x in _splits().values()]))
    _cache(tmp_path).load(key, _refuse, LATENT)  # and rewritten: valid from then on


def test_a_changed_split_of_the_same_name_is_not_served_stale_latents(tmp_path):
    _cache(tmp_path).load("d" * 16, Counting(), LATENT)
    other = _splits(seed=1)  # e.g. another dataset.seed: the same names, other images
    encode = Counting()
    with pytest.warns(LatentCacheWarning, match="not this split's"):
        _, codes = _cache(tmp_path, other).load("d" * 16, encode, LATENT)
    assert encode.examples == 62
    torch.testing.assert_close(codes, torch.cat([_encode(x) for x in other.values()]))


def test_the_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "k" / "toy_train.pt"
    write_atomic(path, {"a": torch.ones(2)})
    assert [p.name for p in path.parent.iterdir()] == ["toy_train.pt"]  # no temporary file left

    def dies(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, {"a": torch.zeros(2)})
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == ["toy_train.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))  # the old file, whole


def test_content_keys_separate_distinct_examples_and_agree_on_equal_ones():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5000, 3, 8, 8), dtype=torch.uint8)
    keys = content_keys(x)
    assert keys.dtype == torch.long and len(torch.unique(keys)) == 5000 and bool((keys >= 0).all())
    one_off = x.clone()
    one_off[:, 0, 0, 0] ^= 1  # every example changed in one value
    assert not bool((content_keys(one_off) == keys).any())
    assert torch.equal(content_keys(x[[3, 3, 7]]), keys[[3, 3, 7]])
    ids = torch.randint(0, 2**40, (100, 300))  # large integer levels (token ids): no overflow
    assert len(torch.unique(content_keys(ids))) == 100 and bool((content_keys(ids) >= 0).all())


def test_the_table_finds_cached_latents_by_content_and_reports_misses():
    splits = _splits()
    x = torch.cat(list(splits.values()))
    table = LatentTable()
    assert not table.ready
    table.fill(torch.cat([content_keys(x), content_keys(x[:5])]), torch.cat([_encode(x), _encode(x[:5])]))
    assert table.ready and len(table.keys) == len(torch.unique(content_keys(x)))
    batch = torch.cat([x[torch.randperm(len(x))[:20]], torch.full((3, 1, 4, 4), 16, dtype=torch.uint8)])
    codes, hit = table.lookup(batch)
    assert hit.tolist() == [True] * 20 + [False] * 3
    assert torch.equal(codes[:20], _encode(batch[:20]))  # the same as encoding them, in the batch's order
    assert not any(k in table.state_dict() for k in ("keys", "codes"))  # derived data: not in checkpoints
    empty = LatentTable()
    assert not empty.lookup(batch)[1].any()


def test_splits_with_a_batch_transform_are_not_cached():
    from genlab.data.base import TensorSplit

    class DM:
        info = DataInfo(name="toy", kind="image", shape=(1, 4, 4), levels=17)
        splits = {"train": TensorSplit(_splits()["train"], transform=lambda x, g: x),
                  "test": TensorSplit(_splits()["test"])}

    cache = LatentCache.of(DM(), None)
    assert list(cache.splits) == ["test"] and cache.dataset == "toy" and cache.root is None
    assert os.fspath(LatentCache.of(DM(), "/d").path("k", "test")) == "/d/k/toy_test.pt"
