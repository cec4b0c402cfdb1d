"""DMD2's LMDB layouts (imagedata/lmdb.py): the same key -> bytes as DMD2's own writers (recorded by
tests/fixtures/record_dmd2_lmdb.py), read back through both datasets and DataLoader workers, the
converter (preprocessing/make_lmdb.py) and the one-line errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from conftest import run_script
from torch.utils.data import DataLoader

from imagedata import build_dataset, resolve_dataset_kind
from imagedata.lmdb import (
    LMDBImages,
    LMDBLatentsPrompts,
    LMDBWriter,
    open_lmdb,
    read_row,
    read_shape,
    write_arrays,
)
from imagedata.procedural import ProceduralImages
from preprocessing import make_lmdb

REFERENCE = torch.load(Path(__file__).parent / "fixtures" / "dmd2_lmdb_reference.pt")


def entries(path: Path) -> dict[str, bytes]:
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return {key.decode(): bytes(value) for key, value in txn.cursor()}


def raw_lmdb(path: Path, items: dict[str, bytes]) -> Path:
    """An LMDB holding exactly ``items`` (written with lmdb itself, not with the code under test)."""
    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key.encode(), value)
    return path


def one_line_error(match: str, call, *args) -> str:
    with pytest.raises(ValueError, match=match) as info:
        call(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- the original's format ------------------------------------------------------------------------


def test_writer_stores_dmd2s_imagenet_bytes(tmp_path):
    ref = REFERENCE["imagenet"]
    images, labels = ref["images"].numpy(), ref["labels"].numpy()
    write_arrays(tmp_path / "whole", {"images": images, "labels": labels})
    assert entries(tmp_path / "whole") == ref["entries"]
    with LMDBWriter(tmp_path / "chunks") as writer:  # DMD2 writes one transaction per class folder
        writer.append({"images": images[:3], "labels": labels[:3]})
        writer.append({"images": images[3:], "labels": labels[3:]})
    assert entries(tmp_path / "chunks") == ref["entries"]


def test_writer_stores_dmd2s_latents_and_utf8_prompts(tmp_path):
    ref = REFERENCE["sd"]
    write_arrays(tmp_path / "sd", {"latents": ref["latents"].numpy(), "prompts": ref["prompts"]})
    assert entries(tmp_path / "sd") == ref["entries"]
    assert ref["entries"]["prompts_2_data"] == "café au lait ☕ in the morning".encode()


def test_datasets_read_what_dmd2_wrote(tmp_path):
    ref = REFERENCE["imagenet"]
    ds = LMDBImages(raw_lmdb(tmp_path / "imagenet", ref["entries"]))
    assert (len(ds), ds.image_size, ds.targets, ds.num_classes) == (4, 8, [3, 0, 7, 1], 8)
    assert ds.classes == [str(i) for i in range(8)]
    for i in range(4):
        x, label = ds[i]
        assert x.dtype == torch.float32 and label == ref["labels"][i]
        assert torch.equal(x, ref["images"][i].float() / 127.5 - 1)
    sd = LMDBLatentsPrompts(raw_lmdb(tmp_path / "sd", REFERENCE["sd"]["entries"]))
    assert len(sd) == 3 and sd.latent_shape == (4, 2, 2)
    latents, prompt = sd[2]
    assert torch.equal(latents, REFERENCE["sd"]["latents"][2].float()) and prompt == REFERENCE["sd"]["prompts"][2]


# --- round trips ----------------------------------------------------------------------------------


def test_round_trip_of_any_array_while_the_map_grows(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)  # 120 KiB through a 32 KiB first map
    moments = rng.standard_normal((40, 2, 3)).astype(np.float32)
    with LMDBWriter(tmp_path / "db", map_size=1 << 15) as writer:
        for start in range(0, 40, 16):
            writer.append({"images": images[start:start + 16], "moments": moments[start:start + 16]})
    env = open_lmdb(tmp_path / "db")
    assert read_shape(env, "images") == (40, 3, 32, 32) and read_shape(env, "moments") == (40, 2, 3)
    assert read_shape(env, "labels") is None
    for i in (0, 17, 39):
        assert np.array_equal(read_row(env, "images", i, np.uint8, (3, 32, 32)), images[i])
        assert np.array_equal(read_row(env, "moments", i, np.float32, (2, 3)), moments[i])
    env.close()


def test_both_layouts_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8), np.array([5, 0, 2, 2, 1, 9])
    write_arrays(tmp_path / "images", {"images": images, "labels": labels})
    ds = LMDBImages(tmp_path / "images")
    assert ds.targets == labels.tolist() and ds.num_classes == 10
    assert torch.equal(torch.stack([ds[i][0] for i in range(6)]), torch.from_numpy(images).float() / 127.5 - 1)
    latents, prompts = rng.standard_normal((5, 4, 3, 3)).astype(np.float16), [f"prompt {i} ü" for i in range(5)]
    write_arrays(tmp_path / "sd", {"latents": latents, "prompts": prompts})
    sd = LMDBLatentsPrompts(tmp_path / "sd")
    assert [sd[i][1] for i in range(5)] == prompts
    assert torch.equal(torch.stack([sd[i][0] for i in range(5)]), torch.from_numpy(latents).float())


def test_dataloader_workers_open_their_own_handle(tmp_path):
    images = np.arange(10 * 3 * 4 * 4, dtype=np.uint8).reshape(10, 3, 4, 4)
    write_arrays(tmp_path / "db", {"images": images, "labels": np.arange(10) % 3})
    ds = LMDBImages(tmp_path / "db")
    ds[0]  # the parent opens a handle before the workers fork
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    x, y = (torch.cat(parts) for parts in zip(*loader))
    assert torch.equal(x, torch.from_numpy(images).float() / 127.5 - 1) and y.tolist() == ds.targets
    again = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets; a second reader of the same path
    assert torch.equal(again[9][0], x[9]) and torch.equal(LMDBImages(tmp_path / "db")[4][0], x[4])
    write_arrays(tmp_path / "sd", {"latents": np.ones((4, 1, 2, 2), np.float16), "prompts": list("abcd")})
    prompts = [p for _, batch in DataLoader(LMDBLatentsPrompts(tmp_path / "sd"), batch_size=2, num_workers=2)
               for p in batch]
    assert prompts == list("abcd")


# --- the kind and the converter -------------------------------------------------------------------


def test_an_lmdb_data_path_is_its_own_kind(tmp_path):
    write_arrays(tmp_path / "db", {"images": np.zeros((2, 3, 8, 8), np.uint8), "labels": np.array([0, 1])})
    assert resolve_dataset_kind(None, str(tmp_path / "db")) == "lmdb"
    assert isinstance(build_dataset("lmdb", str(tmp_path / "db"), 8, 2), LMDBImages)
    one_line_error("are 8 px, not --image-size 16", build_dataset, "lmdb", str(tmp_path / "db"), 16, 2)


def test_converter_writes_the_builtin_images_and_refuses_an_existing_dest(tmp_path):
    dest = tmp_path / "builtin_lmdb"
    args = ["--source", "builtin", "--num-images", "12", "--num-classes", "4", "--image-size", "16", "--dest", str(dest)]
    make_lmdb.main(make_lmdb.parse_args(args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builtin_lmdb"]  # the .partial folder was renamed
    ds, source = LMDBImages(dest), ProceduralImages(12, resolution=16, num_classes=4)
    assert ds.targets == source.targets and ds.image_size == 16
    assert all(np.array_equal(ds.image(i), source.image(i).transpose(2, 0, 1)) for i in range(12))
    one_line_error("exists and is not empty", make_lmdb.main, make_lmdb.parse_args(args))
    no_count = ["--source", "builtin", "--dest", str(tmp_path / "other")]
    one_line_error("pass --num-images N", make_lmdb.main, make_lmdb.parse_args(no_count))


# --- errors ----------------------------------------------------------------------------------------

IMAGE = bytes(3 * 2 * 2)
LABEL = np.int64(0).tobytes()


@pytest.mark.parametrize("items, match", [
    ({}, "no images_shape key"),  # an interrupted write: rows but no shapes
    ({"images_shape": b"2 3 2 2", "images_0_data": IMAGE, "images_1_data": IMAGE, "labels_0_data": LABEL,
      "labels_1_data": LABEL}, "no labels_shape key"),
    ({"images_shape": b"2 3 2 2", "labels_shape": b"3"}, r"labels_shape \(3,\) does not match the 2 images"),
    ({"images_shape": b"2 2 2 3", "labels_shape": b"2"}, r"not \(N, 3, H, H\)"),
    ({"images_shape": b"2 3 two 2", "labels_shape": b"2"}, "not 'N d1 d2 ...'"),
    ({"images_shape": b"2 3 2 2", "labels_shape": b"2", "images_0_data": IMAGE}, "no row 1 of 'images'"),
    ({"images_shape": b"2 3 2 2", "labels_shape": b"2", "images_0_data": IMAGE, "images_1_data": IMAGE[:5]},
     "row 1 of 'images' has 5 bytes, not 12"),
    ({"images_shape": b"2 3 2 2", "labels_shape": b"2", "images_0_data": IMAGE, "images_1_data": IMAGE,
      "labels_0_data": LABEL}, "holds 1 labels for 2 images"),
])
def test_malformed_image_lmdb_is_one_line(tmp_path, items, match):
    with lmdb.open(str(tmp_path / "db"), map_size=1 << 20) as env, env.begin(write=True) as txn:
        txn.put(b"images_0_data", IMAGE)
        for key, value in items.items():
            txn.put(key.encode(), value)
    one_line_error(match, LMDBImages, tmp_path / "db")


def test_missing_or_unfinished_lmdb_is_one_line(tmp_path):
    one_line_error("holds no LMDB .no data.mdb.; make one with preprocessing/make_lmdb.py", LMDBImages, tmp_path)
    with pytest.raises(RuntimeError), LMDBWriter(tmp_path / "cut") as writer:
        writer.append({"images": np.zeros((2, 3, 2, 2), np.uint8), "labels": np.zeros(2, np.int64)})
        raise RuntimeError("interrupted")
    one_line_error("no images_shape key", LMDBImages, tmp_path / "cut")
    write_arrays(tmp_path / "sd", {"latents": np.zeros((2, 4), np.float16), "prompts": ["a", "b"]})
    with lmdb.open(str(tmp_path / "sd")) as env, env.begin(write=True) as txn:
        txn.delete(b"prompts_1_data")
    one_line_error("no row 1 of 'prompts'", LMDBLatentsPrompts, tmp_path / "sd")
    one_line_error("no latents_shape key", LMDBLatentsPrompts, tmp_path / "cut")
    one_line_error("already holds an LMDB", LMDBWriter, tmp_path / "sd")


def test_a_truncated_lmdb_is_one_line_not_a_bus_error(tmp_path):
    """LMDB maps data.mdb into memory: reading past the end of a truncated copy kills the process (SIGBUS) without
    a word. The file is checked against the pages its header names; run in its own process, so that the test run
    survives where the check is missing."""
    rng = np.random.default_rng(0)
    write_arrays(tmp_path / "db", {"images": rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8),
                                   "labels": np.arange(64)})
    data = tmp_path / "db" / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    code = "import sys; from imagedata.lmdb import LMDBImages; from common.cli import run_cli; run_cli(LMDBImages, sys.argv[1])"
    proc = run_script("-c", code, str(tmp_path / "db"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{data} is truncated" in proc.stderr and "copy or unzip it again" in proc.stderr
