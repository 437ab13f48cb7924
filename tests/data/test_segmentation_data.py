"""Segmentation readers on real files in their on-disk formats: digit-scenes, an ADEChallengeData2016 tree, a folder."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from lkca_deploy.data import load_arrays, open_split
from lkca_deploy.data import segmentation as seg
from lkca_deploy.data.scenes import CLASS_NAMES, make_scenes
from lkca_runtime.errors import UserError
from lkca_runtime.spec import PreprocessSpec


def write_pair(image_dir, mask_dir, stem, labels, suffix=".jpg", image_size=None):
    """An RGB image (random pixels) and a PNG label map; ``image_size`` (W, H) other than the mask's makes a bad pair."""
    labels = np.asarray(labels, np.uint8)
    h, w = labels.shape
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(stem)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if image_size is not None:
        image = image.resize(image_size)
    image.save(image_dir / f"{stem}{suffix}")
    Image.fromarray(labels, mode="L").save(mask_dir / f"{stem}.png")


def halves(h, w, left, right):
    labels = np.full((h, w), left, np.uint8)
    labels[:, w // 2 :] = right
    return labels


def make_ade_tree(root):
    """A small ADEChallengeData2016 release: jpg images of several sizes, png annotations with raw labels 0..150."""
    base = root / "ADEChallengeData2016"
    for i, (h, w) in enumerate([(30, 40), (50, 50), (47, 33)]):
        write_pair(base / "images" / "training", base / "annotations" / "training", f"ADE_train_{i + 1:08d}",
                   halves(h, w, 1, 150))
    for i, (h, w) in enumerate([(40, 64), (64, 40)]):
        write_pair(base / "images" / "validation", base / "annotations" / "validation", f"ADE_val_{i + 1:08d}",
                   halves(h, w, 0, 150))
    return base


# --- digit-scenes ---------------------------------------------------------------------------------------------------


def test_digit_scenes_split_yields_preprocessed_images_and_masks():
    split = seg.open_segmentation_split("digit-scenes", "test", 64)
    scenes = make_scenes("test")
    assert split.spec.task == "segmentation" and split.spec.class_names == CLASS_NAMES
    assert split.spec.channels == 1 and split.natural is False and len(split.dataset) == len(scenes)
    x, mask = split.dataset[3]
    assert x.dtype.is_floating_point and tuple(x.shape) == (1, 64, 64) and str(mask.dtype) == "torch.int64"
    np.testing.assert_allclose(x.numpy(), split.spec.preprocess([scenes.images[3]])[0])
    np.testing.assert_array_equal(mask.numpy(), scenes.masks[3])


def test_load_arrays_takes_a_seeded_subset_and_resizes_masks_nearest():
    spec = PreprocessSpec((32, 32), 1, (0.5,), (0.5,), CLASS_NAMES, task="segmentation")
    x, masks = load_arrays("digit-scenes", "test", spec, limit=6, seed=1)
    again_x, again_masks = seg.load_segmentation_arrays("digit-scenes", "test", spec, limit=6, seed=1)
    assert x.shape == (6, 1, 32, 32) and x.dtype == np.float32
    assert masks.shape == (6, 32, 32) and masks.dtype == np.int64
    np.testing.assert_array_equal(x, again_x)
    np.testing.assert_array_equal(masks, again_masks)
    assert set(np.unique(masks)) <= set(range(11)) and masks.max() > 0  # nearest: labels, never blends of them


# --- ADE20K ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_release_dir", [False, True])
def test_ade20k_reads_the_release_layout_and_maps_labels(tmp_path, use_release_dir):
    base = make_ade_tree(tmp_path)
    root = base if use_release_dir else tmp_path
    val = seg.open_segmentation_split("ade20k", "test", 32, root=root)  # "test" is the validation split
    train = seg.open_segmentation_split("ade20k", "train", 32, root=root)
    assert len(val.dataset) == 2 and len(train.dataset) == 3
    assert len(val.spec.class_names) == 150 and val.spec.class_names[0] == "wall" and val.spec.channels == 3
    assert val.natural is True
    for x, mask in val.dataset:  # 64x40 and 40x64 images, resized whole to the 32x32 input
        assert tuple(x.shape) == (3, 32, 32) and tuple(mask.shape) == (32, 32)
        assert (mask[:, :16] == 255).all() and (mask[:, 16:] == 149).all()  # raw 0 -> ignore, raw 150 -> 149
    _, mask = train.dataset[0]
    assert set(np.unique(mask.numpy())) == {0, 149}  # raw 1 -> class 0


def test_ade20k_missing_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="ADE20K not found") as err:
        seg.open_segmentation_split("ade20k", "test", 32, root=tmp_path)
    assert str(tmp_path) in str(err.value) and "--download" in str(err.value) and "\n" not in str(err.value)


def test_ade20k_download_unpacks_the_release_into_place(tmp_path, monkeypatch):
    make_ade_tree(tmp_path / "src")
    archive = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((tmp_path / "src").rglob("*")):
            z.write(path, path.relative_to(tmp_path / "src"))
    monkeypatch.setattr(seg, "ADE20K_URL", archive.as_uri())
    root = tmp_path / "data"
    split = seg.open_segmentation_split("ade20k", "val", 32, root=root, download=True)
    assert len(split.dataset) == 2
    assert sorted(p.name for p in root.iterdir()) == ["ADEChallengeData2016"]  # no temp dir or zip left behind


def test_ade20k_download_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(seg, "ADE20K_URL", (tmp_path / "nowhere.zip").as_uri())
    with pytest.raises(UserError, match="download from .* failed") as err:
        seg.open_segmentation_split("ade20k", "test", 32, root=tmp_path / "data", download=True)
    assert "\n" not in str(err.value)


# --- folders --------------------------------------------------------------------------------------------------------


def make_folder(path, n=10, classes=("sky", "road", "car"), classes_txt=True):
    for i in range(n):
        labels = halves(24, 24, i % len(classes), 255 if i % 2 else (i + 1) % len(classes))
        write_pair(path / "images", path / "masks", f"img{i:02d}", labels, suffix=".png")
    if classes_txt:
        (path / "classes.txt").write_text("\n".join(classes) + "\n")
    return path


def test_folder_is_recognised_split_and_named_by_classes_txt(tmp_path):
    path = make_folder(tmp_path / "street")
    train = open_split(str(path), "train", "segmentation", 16)
    test = open_split(str(path), "test", "segmentation", 16)
    assert len(train.dataset) == 8 and len(test.dataset) == 2
    assert train.spec.class_names == ("sky", "road", "car") and train.spec.task == "segmentation"
    masks = np.concatenate([m.numpy().ravel() for _, m in train.dataset])
    assert set(np.unique(masks)) == {0, 1, 2, 255}


def test_folder_without_classes_txt_counts_classes_from_masks(tmp_path):
    path = make_folder(tmp_path / "street", classes_txt=False)
    for i in range(3):  # one mask holds label 4: five classes, 0..4
        write_pair(path / "images", path / "masks", f"extra{i}", halves(8, 8, 4, 0), suffix=".png")
    split = seg.open_segmentation_split(str(path), "train", 16)
    assert split.spec.class_names == ("0", "1", "2", "3", "4")


def test_folder_with_split_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            write_pair(tmp_path / "images" / split, tmp_path / "masks" / split, f"{split}{i}", halves(8, 8, 0, 1),
                       suffix=".png")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    assert len(seg.open_segmentation_split(str(tmp_path), "train", 8).dataset) == 3
    assert len(seg.open_segmentation_split(str(tmp_path), "test", 8).dataset) == 2


def test_large_splits_are_read_per_item_with_the_same_result(tmp_path, monkeypatch):
    path = make_folder(tmp_path / "street")
    eager = seg.open_segmentation_split(str(path), "train", 16).dataset
    monkeypatch.setattr(seg, "PRELOAD_BYTES", 0)
    lazy = seg.open_segmentation_split(str(path), "train", 16).dataset
    assert type(lazy) is not type(eager)
    for (xe, me), (xl, ml) in zip(eager, lazy):
        np.testing.assert_array_equal(xe.numpy(), xl.numpy())
        np.testing.assert_array_equal(me.numpy(), ml.numpy())


# --- bad input ------------------------------------------------------------------------------------------------------


def test_mask_of_another_size_names_the_file(tmp_path):
    path = make_folder(tmp_path / "street")
    write_pair(path / "images", path / "masks", "img03", halves(24, 24, 0, 1), suffix=".png", image_size=(30, 24))
    spec = PreprocessSpec((16, 16), 3, (0,) * 3, (1,) * 3, task="segmentation")
    with pytest.raises(UserError, match=r"mask .*img03\.png is 24x24 but its image img03\.png is 30x24"):
        for split in ("train", "test"):  # whichever split img03 fell into
            load_arrays(str(path), split, spec)


def test_label_beyond_the_class_count_is_refused_but_255_is_not(tmp_path):
    path = make_folder(tmp_path / "street")  # three classes, and 255 in half of the masks
    write_pair(path / "images", path / "masks", "img03", halves(24, 24, 0, 7), suffix=".png")
    with pytest.raises(UserError, match=r"img03\.png has label 7, beyond the 3 classes"):
        for split in ("train", "test"):  # whichever split img03 fell into
            seg.open_segmentation_split(str(path), split, 16)


def test_ade20k_label_beyond_150_is_refused(tmp_path):
    base = make_ade_tree(tmp_path)
    write_pair(base / "images" / "validation", base / "annotations" / "validation", "ADE_val_00000001",
               halves(40, 64, 0, 151))
    with pytest.raises(UserError, match="has label 151, beyond the 150 classes"):
        seg.open_segmentation_split("ade20k", "test", 32, root=tmp_path)


def test_images_without_masks_are_skipped_and_counted(tmp_path, capsys):
    path = make_folder(tmp_path / "street")
    for i in range(2):
        (path / "masks" / f"img0{i}.png").unlink()
    train = seg.open_segmentation_split(str(path), "train", 16)
    test = seg.open_segmentation_split(str(path), "test", 16)
    assert len(train.dataset) + len(test.dataset) == 8
    assert train.dataset.skipped == 2 and "skipped 2 image(s) with no mask" in capsys.readouterr().err


def test_no_image_with_a_mask_left_is_an_error(tmp_path):
    base = make_ade_tree(tmp_path)
    for mask in (base / "annotations" / "validation").iterdir():
        mask.unlink()
    with pytest.raises(UserError, match=r"no image with a matching mask .*\(2 image\(s\) without one\)"):
        seg.open_segmentation_split("ade20k", "test", 32, root=tmp_path)


def test_corrupt_image_is_named(tmp_path):
    path = make_folder(tmp_path / "street")
    for i in range(10):
        (path / "images" / f"img{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UserError, match=r"cannot read image .*img\d\d\.png"):
        seg.open_segmentation_split(str(path), "test", 16)


def test_rgb_mask_is_refused(tmp_path):
    path = make_folder(tmp_path / "street")
    for i in range(10):
        Image.new("RGB", (24, 24)).save(path / "masks" / f"img{i:02d}.png")
    with pytest.raises(UserError, match="is a RGB image; masks are single-channel PNG label maps"):
        seg.open_segmentation_split(str(path), "test", 16)


def test_unknown_name_is_refused():
    with pytest.raises(UserError, match="unknown segmentation data set 'cityscapes'"):
        seg.open_segmentation_split("cityscapes", "train", 64)
