"""``dataset=image_folder``: folders of PNG/JPEG files written here, loaded to known tensors and labels;
the on-disk cache (reused, invalidated, rebuilt); seeded splits; training-only horizontal flips; clear
errors; one real short training (conditional, with flips) and samples of it by class name."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import image_folder
from genlab.data.base import DataError, IndexBatchSampler
from genlab.data.image_folder import FlipSplit, ImageCacheWarning, ImageFolderDataModule, hflip, scan_folder
from genlab.metrics.quality import discrete

PNG = b"\x89PNG\r\n\x1a\n"


def save(path: Path, arr: np.ndarray, **kwargs) -> np.ndarray:
    """Write ``arr`` (H, W) grey or (H, W, 3) RGB uint8 as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return arr


def grey(seed: int, h: int = 6, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


@pytest.fixture
def tree(tmp_path):
    """Grey 6x8 PNGs in two classes, one nested a level deeper, plus a text file and a hidden file.
    Returns (root, expected x (6, 1, 6, 8), expected labels)."""
    root = tmp_path / "pets"
    order = ["cats/0.png", "cats/1.png", "cats/2.png", "dogs/a.png", "dogs/puppies/b.png", "dogs/puppies/c.png"]
    arrays = [save(root / name, grey(i)) for i, name in enumerate(order)]
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0\1")
    return root, torch.from_numpy(np.stack(arrays))[:, None], torch.tensor([0, 0, 0, 1, 1, 1])


def module(path, tmp_path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(path), cache_dir=str(tmp_path / "cache"), **kwargs)


# -- reading -------------------------------------------------------------------------------------
def test_class_folders_load_to_the_pixels_and_labels_and_skip_other_files(tree, tmp_path, caplog):
    root, x, y = tree
    dm = module(root, tmp_path)
    with caplog.at_level(logging.INFO, logger="genlab.data.image_folder"):
        got_x, got_y, classes = dm.data()
    assert classes == ("cats", "dogs") and dm.classes == classes
    assert got_x.dtype == torch.uint8 and torch.equal(got_x, x) and torch.equal(got_y, y)
    assert "6 images (2 classes); 1 non-image files skipped" in caplog.text
    info = dm.info
    assert (info.name, info.kind, info.shape, info.levels, info.num_classes) == ("pets", "image", (1, 6, 8), 256, 2)


def test_a_flat_folder_is_unlabelled(tmp_path):
    arrays = [save(tmp_path / "flat" / f"{i}.png", grey(i)) for i in range(3)]
    x, y, classes = module(tmp_path / "flat", tmp_path).data()
    assert y is None and classes is None and torch.equal(x[:, 0], torch.from_numpy(np.stack(arrays)))
    assert module(tmp_path / "flat", tmp_path).info.num_classes is None


def test_rgb_and_jpeg_files_and_the_channel_choice(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    save(tmp_path / "mix" / "a.png", rgb)
    smooth = np.tile(np.linspace(0, 255, 8, dtype=np.uint8), (6, 1))
    save(tmp_path / "mix" / "b.jpg", smooth, quality=95)
    x, _, _ = module(tmp_path / "mix", tmp_path).data()  # one RGB file: everything RGB
    assert x.shape == (2, 3, 6, 8) and torch.equal(x[0], torch.from_numpy(rgb).permute(2, 0, 1))
    assert (x[1].float() - torch.from_numpy(smooth).float()).abs().mean() < 4  # JPEG: lossy, grey in all 3
    assert torch.equal(x[1, 0], x[1, 1]) and torch.equal(x[1, 1], x[1, 2])
    g, _, _ = module(tmp_path / "mix", tmp_path, channels=1).data()
    assert g.shape == (2, 1, 6, 8)
    assert torch.equal(g[0, 0], torch.from_numpy(np.array(Image.fromarray(rgb).convert("L"))))


def test_size_resizes_to_cover_and_crops_the_centre(tmp_path):
    wide = np.zeros((8, 16), dtype=np.uint8)
    wide[:, 4:12] = 200  # the centre 8 columns
    wide[:, 12:] = 50
    save(tmp_path / "sizes" / "wide.png", wide)
    save(tmp_path / "sizes" / "small.png", grey(1, 4, 4))
    with pytest.raises(DataError, match=r"2 different sizes.*small\.png is 4x4 and .*wide\.png is 16x8.*dataset\.size"):
        module(tmp_path / "sizes", tmp_path).data()
    x, _, _ = module(tmp_path / "sizes", tmp_path, size=8).data()
    assert x.shape == (2, 1, 8, 8)
    assert torch.all(x[1] == 200)  # sorted: small.png, wide.png; the centre kept at scale 1
    x, _, _ = module(tmp_path / "sizes", tmp_path, size=[2, 4]).data()
    assert x.shape == (2, 1, 2, 4)


def test_an_exif_rotation_is_applied_as_viewers_show_it(tmp_path):
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 degrees clockwise to display"
    arr = save(tmp_path / "photo" / "a.png", grey(3), exif=exif)  # 6x8 stored, 8x6 shown
    x, _, _ = module(tmp_path / "photo", tmp_path).data()
    assert x.shape == (1, 1, 8, 6) and torch.equal(x[0, 0], torch.from_numpy(np.rot90(arr, -1).copy()))


def test_16_bit_grey_keeps_the_top_8_bits(tmp_path):
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    save(tmp_path / "deep" / "a.png", deep)
    assert Image.open(tmp_path / "deep" / "a.png").mode.startswith("I;16")
    x, _, _ = module(tmp_path / "deep", tmp_path).data()
    assert x.shape == (1, 1, 3, 4) and x.flatten().tolist() == (deep.ravel() >> 8).tolist()


def test_levels_quantise_the_8_bit_values(tmp_path):
    save(tmp_path / "q" / "a.png", np.array([[0, 127, 128, 255]], dtype=np.uint8))
    dm = module(tmp_path / "q", tmp_path, levels=2)
    assert dm.data()[0].flatten().tolist() == [0, 0, 1, 1] and dm.info.levels == 2


# -- errors --------------------------------------------------------------------------------------
def test_corrupt_and_truncated_images_are_errors_naming_the_file(tmp_path):
    save(tmp_path / "bad" / "good.png", grey(0))
    (tmp_path / "bad" / "broken.png").write_bytes(b"this is no png")
    with pytest.raises(DataError, match=r"image .*broken\.png cannot be read.*Fix: replace or delete"):
        module(tmp_path / "bad", tmp_path).data()
    (tmp_path / "bad" / "broken.png").unlink()
    whole = (tmp_path / "bad" / "good.png")
    save(tmp_path / "bad" / "cut.jpg", np.stack([grey(2)] * 3, -1))
    data = (tmp_path / "bad" / "cut.jpg").read_bytes()
    (tmp_path / "bad" / "cut.jpg").write_bytes(data[: len(data) // 2])  # a valid header, half the data
    with pytest.raises(DataError, match=r"image .*cut\.jpg cannot be read"):
        module(tmp_path / "bad", tmp_path, size=6, channels=1).data()  # header fine: found while decoding
    assert whole.exists()


@pytest.mark.parametrize("case, message", [
    ("missing", r"image folder .*missing does not exist\. Fix: set dataset\.path"),
    ("empty", r"holds no images \(1 other files skipped"),
    ("file", r"is a file, not a folder"),
    ("mixed", r"images both at its top level \(e\.g\. .*top\.png\) and in class sub-folders \(a\)"),
])
def test_folder_errors_are_one_paragraph_naming_the_path(case, message, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("hi")
    (tmp_path / "file").write_text("x")
    save(tmp_path / "mixed" / "top.png", grey(0))
    save(tmp_path / "mixed" / "a" / "x.png", grey(1))
    with pytest.raises(DataError, match=message) as err:
        module(tmp_path / case, tmp_path).info
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": [1, 2, 3]}, "is not an image size"), ({"size": 0}, "is not an image size"),
    ({"channels": 4}, "dataset.channels=4"), ({"levels": 300}, "dataset.levels=300"),
])
def test_bad_options_are_refused(kwargs, message, tmp_path):
    with pytest.raises(DataError, match=message):
        ImageFolderDataModule(str(tmp_path), **kwargs)


# -- the cache -----------------------------------------------------------------------------------
def count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = image_folder.decode_image

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(image_folder, "decode_image", counting)
    return calls


def test_the_cache_is_reused_and_invalidated_when_a_file_changes(tree, tmp_path, monkeypatch):
    root, x, y = tree
    calls = count_decodes(monkeypatch)
    module(root, tmp_path).data()
    assert len(calls) == 6 and len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again = module(root, tmp_path).data()
    assert len(calls) == 6, "an unchanged folder is read from the cache, no image decoded"
    assert torch.equal(again[0], x) and torch.equal(again[1], y) and again[2] == ("cats", "dogs")
    changed = save(root / "cats" / "1.png", grey(99))
    os.utime(root / "cats" / "1.png", ns=(10**18, 10**18))  # a later modification time, whatever the clock
    x2, _, _ = module(root, tmp_path).data()
    assert len(calls) == 12 and torch.equal(x2[1, 0], torch.from_numpy(changed))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1, "the stale conversion is removed"
    save(root / "dogs" / "new.png", grey(7))
    assert len(module(root, tmp_path).data()[0]) == 7 and len(calls) == 19
    module(root, tmp_path, size=4).data()  # other options: a conversion of their own, beside the first
    assert len(calls) == 26 and len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_a_damaged_cache_is_rebuilt_with_a_warning(tree, tmp_path, monkeypatch):
    root, x, _ = tree
    module(root, tmp_path).data()
    (cached,) = (tmp_path / "cache").glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:100])
    calls = count_decodes(monkeypatch)
    with pytest.warns(ImageCacheWarning, match="cannot be read"):
        assert torch.equal(module(root, tmp_path).data()[0], x)
    assert len(calls) == 6
    assert torch.equal(module(root, tmp_path).data()[0], x) and len(calls) == 6  # the rewritten file is good


def test_no_cache_dir_converts_every_time(tree, monkeypatch):
    root, x, _ = tree
    calls = count_decodes(monkeypatch)
    for _ in range(2):
        assert torch.equal(ImageFolderDataModule(str(root)).data()[0], x)
    assert len(calls) == 12


# -- splits and flips ----------------------------------------------------------------------------
@pytest.fixture
def folder40(tmp_path):
    """40 random grey 6x8 images in 2 classes (asymmetric: a flip shows)."""
    for i in range(40):
        save(tmp_path / "f40" / ("a" if i % 2 else "b") / f"{i:02d}.png", grey(100 + i))
    return tmp_path / "f40"


def rows(x: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in x]


def test_seeded_splits_are_stable_disjoint_and_complete(folder40, tmp_path):
    a, b = (module(folder40, tmp_path, seed=3).splits for _ in range(2))
    other = module(folder40, tmp_path, seed=4).splits
    for k in ("train", "val", "test"):
        assert torch.equal(a[k].x, b[k].x) and torch.equal(a[k].y, b[k].y)
    assert not torch.equal(a["train"].x, other["train"].x)
    assert [len(a[k]) for k in ("train", "val", "test")] == [32, 4, 4]
    every = rows(torch.cat([a[k].x for k in ("train", "val", "test")]))
    assert len(set(every)) == 40


def test_hflip_flips_only_training_batches_and_replays_them_on_resume(folder40, tmp_path):
    dm = module(folder40, tmp_path, hflip=True, batch_size=8)
    dm.setup("fit")
    train = dm.splits["train"]
    assert isinstance(train, FlipSplit) and train.transform is None
    first = [b["x"] for b in dm.train_dataloader()]
    again = [b["x"] for b in dm.train_dataloader()]
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True)), "same seed, epoch, batch: same flips"
    originals, flipped = set(rows(train.x)), set(rows(train.x.flip(-1)))
    seen = [r for batch in first for r in rows(batch)]
    assert all(r in originals or r in flipped for r in seen)
    n_flipped = sum(r in flipped for r in seen)
    assert 4 <= n_flipped <= 28, n_flipped  # about half of 32
    for loader, split in ((dm.val_dataloader(), "val"), (dm.test_dataloader(), "test")):
        assert torch.equal(torch.cat([b["x"] for b in loader]), dm.splits[split].x)  # never flipped
    assert torch.equal(discrete(train), train.x)  # evaluation code reads the images unflipped
    loader = dm.train_dataloader()  # a resume after 2 batches of the same epoch: the same batches 3 and 4
    loader.load_state_dict({"epoch": 0, "served": 2})
    assert all(torch.equal(p, q) for p, q in zip([b["x"] for b in loader], first[2:], strict=True))


def test_without_hflip_training_batches_are_the_images(folder40, tmp_path):
    dm = module(folder40, tmp_path, batch_size=8)
    seen = set(r for b in dm.train_dataloader() for r in rows(b["x"]))
    assert seen == set(rows(dm.splits["train"].x))


def test_hflip_draws_are_seeded_per_batch():
    x = torch.arange(2 * 3 * 4, dtype=torch.uint8).view(2, 1, 3, 4).repeat(8, 1, 1, 1)
    a, b = (hflip(x, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, hflip(x, torch.Generator().manual_seed(6)))
    split = FlipSplit(x)
    idx = torch.arange(16)
    assert torch.equal(split[(idx, 11)]["x"], split[(idx, 11)]["x"])
    sampler = IndexBatchSampler(16, 4, shuffle=True, drop_last=True, seed=0)
    assert len({s for _, s in sampler}) == 4  # every batch its own seed


# -- Hydra, training, sampling -------------------------------------------------------------------
def test_scan_reports_classes_in_sorted_order(tree):
    listing = scan_folder(tree[0])
    assert listing.classes == ("cats", "dogs") and listing.skipped == 1 and len(listing.files) == 6


def test_a_short_conditional_training_with_flips_and_samples_by_class_name(folder40, tmp_path, capsys):
    from conftest import compose_run

    from genlab.sample import main
    from genlab.train import run

    cfg = compose_run(["model=vae", "model.encoder.hidden=[16]", "model.decoder.hidden=[16]", "model.test_k=2",
                       "dataset=image_folder", f"dataset.path={folder40}", "dataset.hflip=true", "dataset.size=[4,6]",
                       "dataset.batch_size=8", "+conditional=class", "trainer.max_steps=3", "num_samples=4",
                       "callbacks.progress_bar.refresh_rate=0", f"paths.data_dir={tmp_path / 'data'}"],
                      tmp_path / "run")
    results = run(cfg)
    assert results["status"] == "finished" and results["global_step"] == 3
    assert results["dataset"] == "f40"  # the folder names the data
    saved = json.loads(Path(results["path"]).read_text())
    assert saved["family"] == "vae" and Path(saved["samples"]).read_bytes()[:8] == PNG
    assert len(list((tmp_path / "data" / "genlab_image_folders").glob("f40_*.pt"))) == 1
    out = tmp_path / "drawn"
    assert main([str(tmp_path / "run"), "n=5", f"out={out}", "label=b"]) == 0, capsys.readouterr().err
    with np.load(out / "samples.npz") as npz:
        assert npz["x"].shape == (5, 4, 6) and npz["y"].tolist() == [1] * 5  # b: the second class
    assert main([str(tmp_path / "run"), "n=5", f"out={out}", "label=c"]) == 2
    assert "label=c is not a class of this run: pass an id in 0..1 or one of the class names ['a', 'b']" in \
        capsys.readouterr().err
