"""Classification data sets read from tiny files written here in the real release formats.

Each test writes a few records / images in the on-disk layout of the official release, reads them back through the
public API and checks that pixels, labels and class names come back exactly.
"""

import functools
import hashlib
import http.server
import inspect
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lkca_deploy.data import datasets, load_arrays, open_split
from lkca_deploy.data.datasets import RELEASES, Release, open_source, spec_for
from lkca_runtime.errors import UserError

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_NAMES = tuple(f"fine_{i}" for i in range(100))


def random_images(n: int, seed: int) -> np.ndarray:
    """n random HxWxC uint8 32x32 RGB images."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar_records(images: np.ndarray, *label_columns: list[int]) -> bytes:
    """The binary release's records: the label byte(s), then the image as R, G, B planes of 32x32 (CHW)."""
    labels = np.array(label_columns, dtype=np.uint8).T  # (N, label bytes)
    pixels = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels, pixels], axis=1).tobytes()


# --- writers of the release layouts --------------------------------------------------------------------------------


def write_cifar10(folder: Path) -> dict:
    """cifar-10-batches-bin with 3 records per batch file; returns the images and labels written per split."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, test_images = random_images(15, seed=1), random_images(3, seed=2)
    train_labels, test_labels = [i % 10 for i in range(15)], [9, 0, 4]
    for b in range(5):
        rows = slice(3 * b, 3 * b + 3)
        (folder / f"data_batch_{b + 1}.bin").write_bytes(cifar_records(train_images[rows], train_labels[rows]))
    (folder / "test_batch.bin").write_bytes(cifar_records(test_images, test_labels))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")  # the release ends in blank lines
    return {"train": (train_images, train_labels), "test": (test_images, test_labels)}


def write_cifar100(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, fine, seed in (("train", [99, 0, 42, 7], 3), ("test", [5, 63, 1], 4)):
        images = random_images(len(fine), seed)
        coarse = [(f + 7) % 20 for f in fine]  # differs from the fine label: reading the wrong byte shows
        (folder / f"{split}.bin").write_bytes(cifar_records(images, coarse, fine))
        out[split] = (images, fine)
    (folder / "fine_label_names.txt").write_text("\n".join(CIFAR100_NAMES) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse_{i}" for i in range(20)) + "\n")
    return out


def write_svhn(folder: Path, split: str, raw_labels: list[int], seed: int) -> np.ndarray:
    """An SVHN cropped-digits .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    images = random_images(len(raw_labels), seed)
    savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0),
                                             "y": np.array(raw_labels, np.uint8).reshape(-1, 1)})
    return images


TINY_WNIDS = ("n01443537", "n01629819")
TINY_COLOURS = {"train": [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)],
                "val": [(30, 200, 200), (120, 60, 240), (240, 140, 20)]}


def solid_jpeg(path: Path, colour, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (64, 64), colour if mode == "RGB" else colour[0]).save(path, quality=95)


def write_tiny_imagenet(base: Path) -> None:
    """tiny-imagenet-200: 2 classes, 2 train images each, 3 val images listed in val_annotations.txt."""
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (base / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
                                    "n99999999\tunused, not in wnids\n")
    colours = iter(TINY_COLOURS["train"])
    for w in TINY_WNIDS:
        (base / "train" / w).mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")  # in the release; not an image
        for k in range(2):
            solid_jpeg(base / "train" / w / "images" / f"{w}_{k}.JPEG", next(colours))
    val_wnids = (TINY_WNIDS[1], TINY_WNIDS[0], TINY_WNIDS[1])
    for k, colour in enumerate(TINY_COLOURS["val"]):
        solid_jpeg(base / "val" / "images" / f"val_{k}.JPEG", colour, mode="L" if k == 2 else "RGB")
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63\n" for k, w in enumerate(val_wnids)))


def write_png(path: Path, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)  # non-square on purpose
    Image.fromarray(pixels).save(path)
    return pixels


def expected_input(image: np.ndarray, mean, std) -> np.ndarray:
    """What preprocessing must make of a 32x32 HxWxC uint8 image: CHW, /255, normalised."""
    chw = image.transpose(2, 0, 1).astype(np.float32) / 255.0
    return (chw - np.reshape(mean, (-1, 1, 1))) / np.reshape(std, (-1, 1, 1))


# --- CIFAR ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_binary_round_trips(tmp_path, split):
    written = write_cifar10(tmp_path / "cifar-10-batches-bin")[split]
    source = open_source("cifar10", split, root=tmp_path)
    images, labels = written
    assert source.class_names == CIFAR10_NAMES
    assert source.labels.dtype == np.int64 and source.labels.tolist() == labels
    assert source.channels == 3 and source.natural
    for i in range(len(images)):
        pixels = source.read(i)
        assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
        np.testing.assert_array_equal(pixels, images[i])


def test_cifar10_pixel_planes_land_in_the_right_channel(tmp_path):
    """A record whose R plane is 10, G plane 20, B plane 30, except R at row 1, column 2 which is 250."""
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10(folder)
    planes = np.stack([np.full((32, 32), v, np.uint8) for v in (10, 20, 30)])
    planes[0, 1, 2] = 250
    (folder / "test_batch.bin").write_bytes(bytes([7]) + planes.tobytes())
    pixels = open_source("cifar10", "test", root=tmp_path).read(0)
    assert pixels[1, 2].tolist() == [250, 20, 30]
    assert pixels[2, 1].tolist() == [10, 20, 30]


def test_cifar_files_directly_in_the_root_are_found(tmp_path):
    write_cifar10(tmp_path)
    assert len(open_source("cifar10", "train", root=tmp_path)) == 15


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_binary_uses_fine_labels(tmp_path, split):
    images, fine = write_cifar100(tmp_path / "cifar-100-binary")[split]
    source = open_source("cifar100", split, root=tmp_path)
    assert source.class_names == CIFAR100_NAMES
    assert source.labels.tolist() == fine
    for i in range(len(images)):
        np.testing.assert_array_equal(source.read(i), images[i])


def test_cifar_through_load_arrays_and_open_split(tmp_path):
    images, labels = write_cifar10(tmp_path / "cifar-10-batches-bin")["train"]
    split = open_split("cifar10", "train", task="classification", img_size=32, root=tmp_path)
    mean, std = split.spec.mean, split.spec.std
    assert split.spec.class_names == CIFAR10_NAMES and split.spec.input_shape == (3, 32, 32) and split.natural
    x0, y0 = split.dataset[4]
    np.testing.assert_allclose(x0.numpy(), expected_input(images[4], mean, std), atol=1e-5)
    assert int(y0) == labels[4]

    x, y = load_arrays("cifar10", "train", split.spec, root=tmp_path)
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float32 and y.tolist() == labels
    # One known pixel, by hand: green channel at row 5, column 7 of image 11.
    assert x[11, 1, 5, 7] == pytest.approx((images[11, 5, 7, 1] / 255.0 - mean[1]) / std[1], abs=1e-5)

    xs, ys = load_arrays("cifar10", "train", split.spec, root=tmp_path, limit=4, seed=3)
    picked = [int(np.flatnonzero((x == row).all(axis=(1, 2, 3)))[0]) for row in xs]
    assert len(set(picked)) == 4 and picked == sorted(picked) and ys.tolist() == [labels[i] for i in picked]


def test_truncated_cifar_file_is_a_user_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10(folder)
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-100])
    with pytest.raises(UserError, match="test_batch.bin is truncated"):
        open_source("cifar10", "test", root=tmp_path)


def test_cifar_label_beyond_the_class_names_is_a_user_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10(folder)
    (folder / "test_batch.bin").write_bytes(cifar_records(random_images(1, 0), [10]))
    with pytest.raises(UserError, match="label 10"):
        open_source("cifar10", "test", root=tmp_path)


# --- SVHN -------------------------------------------------------------------------------------------------------------


def test_svhn_mat_round_trips_and_maps_10_to_0(tmp_path):
    train = write_svhn(tmp_path / "svhn", "train", [10, 1, 5, 10, 9], seed=5)
    test = write_svhn(tmp_path / "svhn", "test", [3, 10], seed=6)
    source = open_source("svhn", "train", root=tmp_path)
    assert source.labels.tolist() == [0, 1, 5, 0, 9]
    assert source.class_names == tuple(str(i) for i in range(10))
    for i in range(len(train)):
        assert source.read(i).shape == (32, 32, 3)
        np.testing.assert_array_equal(source.read(i), train[i])
    assert open_source("svhn", "test", root=tmp_path).labels.tolist() == [3, 0]

    spec = spec_for(source, 32)
    x, y = load_arrays("svhn", "test", spec, root=tmp_path)
    assert y.tolist() == [3, 0]
    np.testing.assert_allclose(x[1], expected_input(test[1], spec.mean, spec.std), atol=1e-5)


@pytest.mark.parametrize("damage", ["html", "truncated", "bad zlib"])
def test_damaged_svhn_file_is_a_user_error(tmp_path, damage):
    from scipy.io import savemat

    path = tmp_path / "svhn" / "test_32x32.mat"
    write_svhn(tmp_path / "svhn", "test", [1, 2], seed=0)
    if damage == "html":
        path.write_bytes(b"<html>404 not found</html>")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:  # the real files are zlib-compressed: damage inside a compressed element
        savemat(path, {"X": random_images(2, 0).transpose(1, 2, 3, 0), "y": np.ones((2, 1))}, do_compression=True)
        data = bytearray(path.read_bytes())
        data[200:240] = bytes(40)
        path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="test_32x32.mat is not a readable SVHN .mat file"):
        open_source("svhn", "test", root=tmp_path)


def test_svhn_mat_with_wrong_arrays_is_a_user_error(tmp_path):
    from scipy.io import savemat

    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": np.zeros((28, 28, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(UserError, match="lacks SVHN's X"):
        open_source("svhn", "test", root=tmp_path)


# --- Tiny-ImageNet ----------------------------------------------------------------------------------------------------


def test_tiny_imagenet_release_tree(tmp_path):
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    train = open_source("tiny-imagenet", "train", root=tmp_path)
    assert train.class_names == ("goldfish", "European fire salamander")
    assert train.labels.tolist() == [0, 0, 1, 1]
    for i, colour in enumerate(TINY_COLOURS["train"]):
        pixels = np.asarray(train.read(i))
        assert pixels.shape == (64, 64, 3)
        assert np.abs(pixels[10, 20].astype(int) - colour).max() <= 3  # JPEG: near the colour written

    val = open_source("tiny-imagenet", "test", root=tmp_path)  # its test/ is unlabelled: val serves as test
    assert val.labels.tolist() == [1, 0, 1]
    assert np.abs(np.asarray(val.read(0))[5, 5].astype(int) - TINY_COLOURS["val"][0]).max() <= 3
    grey = np.asarray(val.read(2))  # some release JPEGs are greyscale: read as RGB all the same
    assert grey.shape == (64, 64, 3) and abs(int(grey[0, 0, 0]) - TINY_COLOURS["val"][2][0]) <= 3

    spec = spec_for(val, 64)
    x, y = load_arrays("tiny-imagenet", "val", spec, root=tmp_path)
    assert x.shape == (3, 3, 64, 64) and y.tolist() == [1, 0, 1]
    decoded = np.asarray(Image.open(tmp_path / "tiny-imagenet-200/val/images/val_1.JPEG").convert("RGB"))
    np.testing.assert_allclose(x[1], expected_input(decoded, spec.mean, spec.std), atol=1e-5)


def test_tiny_imagenet_annotation_with_unknown_wnid_is_a_user_error(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(base)
    with (base / "val" / "val_annotations.txt").open("a") as f:
        f.write("val_9.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match=r"val_annotations.txt:4"):
        open_source("tiny-imagenet", "test", root=tmp_path)


def test_unreadable_image_is_a_user_error_naming_it(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(base)
    (base / "val" / "images" / "val_1.JPEG").write_bytes(b"not a jpeg")
    source = open_source("tiny-imagenet", "test", root=tmp_path)
    with pytest.raises(UserError, match="val_1.JPEG"):
        source.read(1)


# --- ImageFolder ------------------------------------------------------------------------------------------------------


def test_image_folder_with_split_folders(tmp_path):
    written = {(split, cls, k): write_png(tmp_path / split / cls / f"{k}.png", seed=hash((split, cls, k)) % 999)
               for split, classes in (("train", ("cat", "dog", "emu")), ("test", ("dog", "cat")))
               for cls in classes for k in range(2)}
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    train = open_source(str(tmp_path), "train")
    test = open_source(str(tmp_path), "test")
    # test has no emu folder: the classes (and so the labels) still agree with train's.
    assert train.class_names == test.class_names == ("cat", "dog", "emu")
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(np.asarray(test.read(2)), written[("test", "dog", 0)])
    np.testing.assert_array_equal(np.asarray(train.read(5)), written[("train", "emu", 1)])
    assert open_source(str(tmp_path), "val").labels.tolist() == [0, 0, 1, 1]  # val falls back to test/

    x, y = load_arrays(str(tmp_path), "test", spec_for(test, 32))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]


def test_image_folder_missing_split_folder_is_a_user_error(tmp_path):
    write_png(tmp_path / "train" / "cat" / "0.png", seed=0)
    with pytest.raises(UserError, match=r"no test split .*looked for test, val, validation/"):
        open_source(str(tmp_path), "test")


def test_image_folder_without_split_folders_is_split_per_class_and_fixed(tmp_path):
    written = {}
    for c, cls in enumerate(("ant", "bee", "cow")):
        for k in range(5):
            written[(cls, k)] = write_png(tmp_path / cls / f"{k}.png", seed=10 * c + k)
    train, test = open_source(str(tmp_path), "train"), open_source(str(tmp_path), "test")
    assert train.class_names == test.class_names == ("ant", "bee", "cow")
    assert np.bincount(train.labels).tolist() == [4, 4, 4] and np.bincount(test.labels).tolist() == [1, 1, 1]

    def image_keys(source):
        return {next(key for key, px in written.items() if np.array_equal(px, np.asarray(source.read(i))))
                for i in range(len(source))}

    train_keys, test_keys = image_keys(train), image_keys(test)
    assert not train_keys & test_keys and len(train_keys | test_keys) == 15
    assert all(written_cls == train.class_names[label] for (written_cls, _), label in
               zip(sorted(train_keys), train.labels))
    again = open_source(str(tmp_path), "test")
    assert image_keys(again) == test_keys  # fixed across calls


def test_open_split_reads_an_image_folder(tmp_path):
    pixels = write_png(tmp_path / "a" / "0.png", seed=1)
    for k in range(1, 5):
        write_png(tmp_path / "a" / f"{k}.png", seed=1 + k)
    split = open_split(str(tmp_path), "train", task="classification", img_size=32)
    assert split.spec.class_names == ("a",) and len(split.dataset) == 4
    assert split.spec.resize == "bilinear"
    first = open_source(str(tmp_path), "train").read(0)
    assert np.asarray(first).shape == pixels.shape


# --- digits -----------------------------------------------------------------------------------------------------------


def test_digits_split_is_fixed_disjoint_and_stratified():
    train_idx, test_idx = datasets.digits_split_indices()
    assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == 1797
    again = datasets.digits_split_indices()
    np.testing.assert_array_equal(again[0], train_idx)
    np.testing.assert_array_equal(again[1], test_idx)

    _, labels = datasets.digits_images()
    per_class, in_test = np.bincount(labels), np.bincount(labels[test_idx], minlength=10)
    assert np.all(np.abs(in_test - per_class * datasets.DIGITS_TEST_FRACTION) <= 1)

    train, test = open_source("digits", "train"), open_source("digits", "test")
    assert (len(train), len(test)) == (len(train_idx), len(test_idx))
    np.testing.assert_array_equal(test.labels, labels[test_idx])
    assert not train.natural and train.channels == 1


def test_digits_open_split_shapes():
    split = open_split("digits", "test", task="classification", img_size=32)
    x, y = split.dataset[0]
    assert tuple(x.shape) == (1, 32, 32) and 0 <= int(y) <= 9 and split.spec.class_names[3] == "3"


# --- user errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, folder, url", [
    ("cifar10", "cifar-10-batches-bin", RELEASES["cifar10"].url),
    ("cifar100", "cifar-100-binary", RELEASES["cifar100"].url),
    ("svhn", "svhn", RELEASES["svhn-train"].url),
    ("tiny-imagenet", "tiny-imagenet-200", RELEASES["tiny-imagenet"].url),
])
def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, name, folder, url):
    with pytest.raises(UserError) as err:
        open_source(name, "train", root=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert str((tmp_path / folder).resolve()) in message and "--download" in message and url in message


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError) as err:
        open_source("imagenet-21k", "train", root=tmp_path)
    assert all(name in str(err.value) for name in datasets.CLASSIFICATION_DATASETS)


def test_unknown_split_is_a_user_error():
    with pytest.raises(UserError, match="unknown split 'extra'"):
        open_source("cifar10", "extra")


def test_no_python_object_deserialisation_in_the_readers():
    assert "pickle" not in inspect.getsource(datasets)


# --- --download, against a local HTTP server --------------------------------------------------------------------------


@pytest.fixture
def http_folder(tmp_path):
    """(folder served over HTTP on 127.0.0.1, its base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def cifar10_archive(served: Path, tmp_path: Path) -> tuple[Path, dict]:
    written = write_cifar10(tmp_path / "release" / "cifar-10-batches-bin")
    archive = served / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "release" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    return archive, written


def test_download_fetches_unpacks_and_reads(tmp_path, http_folder, monkeypatch):
    served, base_url = http_folder
    archive, written = cifar10_archive(served, tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(RELEASES, "cifar10", Release(f"{base_url}/{archive.name}", md5, "cifar-10-batches-bin"))
    root = tmp_path / "data"
    source = open_source("cifar10", "test", root=root, download=True)
    assert source.labels.tolist() == written["test"][1]
    np.testing.assert_array_equal(source.read(2), written["test"][0][2])
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-bin"]  # no temporary leftovers, no archive


def test_download_of_a_single_file(tmp_path, http_folder, monkeypatch):
    served, base_url = http_folder
    images = write_svhn(served, "test", [10, 4], seed=7)
    monkeypatch.setitem(RELEASES, "svhn-test", Release(f"{base_url}/test_32x32.mat", None, "svhn", unpack=False))
    source = open_source("svhn", "test", root=tmp_path / "data", download=True)
    assert source.labels.tolist() == [0, 4]
    np.testing.assert_array_equal(source.read(1), images[1])
    assert [p.name for p in (tmp_path / "data" / "svhn").iterdir()] == ["test_32x32.mat"]


def test_download_with_a_wrong_checksum_is_a_user_error_and_leaves_nothing(tmp_path, http_folder, monkeypatch):
    served, base_url = http_folder
    archive, _ = cifar10_archive(served, tmp_path)
    monkeypatch.setitem(RELEASES, "cifar10", Release(f"{base_url}/{archive.name}", "0" * 32, "cifar-10-batches-bin"))
    root = tmp_path / "data"
    with pytest.raises(UserError, match="download from .* failed"):
        open_source("cifar10", "train", root=root, download=True)
    assert list(root.iterdir()) == []


def test_download_without_a_network_is_one_line(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-100-binary.tar.gz"
    monkeypatch.setitem(RELEASES, "cifar100", Release(url, None, "cifar-100-binary"))
    root = tmp_path / "data"
    with pytest.raises(UserError) as err:
        open_source("cifar100", "train", root=root, download=True)
    message = str(err.value)
    assert "\n" not in message and url in message and "failed" in message and str(root.resolve()) in message
    assert list(root.iterdir()) == []
