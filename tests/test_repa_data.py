"""REPA / REG data: ``preprocessing/dataset_tools.py`` convert + encode and ``imagedata/repa.py`` REPADataset.

Encoding uses a tiny random diffusers AutoencoderKL (downsampling 8, 4 latent channels, as the
SD-VAE) saved to a folder, so 32 px images give (8, 4, 4) moments.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from common.cli import run_cli
from imagedata import build_dataset, resolve_dataset_kind
from imagedata.folder import center_crop_arr
from imagedata.procedural import label_of, render_batch
from imagedata.repa import REPADataset, is_repa_layout
from preprocessing.dataset_tools import main, parse_args

N_BUILTIN = 6


def tool(*argv: str) -> None:
    main(parse_args(list(argv)))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes, odd sizes, a grey and a nested image, plus files convert must skip."""
    root = tmp_path_factory.mktemp("imagenet") / "train"
    rng = np.random.default_rng(0)
    files = {"n02/b.png": (37, 23), "n02/a.jpg": (30, 41), "n01/x.png": (50, 19), "n01/sub/y.png": (17, 17),
             "n01/z.png": (64, 33)}
    for name, (w, h) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    Image.fromarray(rng.integers(0, 256, (21, 29), dtype=np.uint8), "L").save(root / "n02" / "c.png")
    (root / "n01" / "notes.txt").write_text("not an image")
    (root / "n02" / ".hidden.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def layout(tiny_vae, tmp_path_factory):
    """A REG data folder of the first N_BUILTIN built-in images at 32 px."""
    root = tmp_path_factory.mktemp("reg")
    tool("convert", "--source", "builtin", "--max-images", str(N_BUILTIN), "--resolution", "32x32",
         "--dest", str(root / "imagenet_256_vae"))
    tool("encode", "--source", str(root / "imagenet_256_vae"), "--dest", str(root / "vae-sd"),
         "--vae", str(tiny_vae), "--batch-size", "4")
    return root


def broken_copy(layout, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(layout, root)
    return root


def test_convert_writes_reg_names_adm_crops_and_class_labels(image_folder, tmp_path):
    dest = tmp_path / "out"
    tool("convert", f"--source={image_folder}", f"--dest={dest}", "--resolution=16x16",
         "--transform=center-crop-dhariwal")
    # sorted path order; labels = sorted class folder index; the text and hidden files are skipped
    sources = ["n01/sub/y.png", "n01/x.png", "n01/z.png", "n02/a.jpg", "n02/b.png", "n02/c.png"]
    names = [f"00000/img{i:08d}.png" for i in range(6)]
    labels = json.loads((dest / "dataset.json").read_text())["labels"]
    assert labels == [[name, int(src.startswith("n02"))] for name, src in zip(names, sources)]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [*names, "dataset.json"]
    for name, src in zip(names, sources):
        with Image.open(dest / name) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (16, 16)
            expected = center_crop_arr(Image.open(image_folder / src).convert("RGB"), 16)
            assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_max_images_takes_the_first_images_and_names_folders_by_thousands(tmp_path):
    dest = tmp_path / "out"
    tool("convert", "--source", "builtin", "--max-images", "1002", "--resolution", "8x8", "--dest", str(dest))
    labels = json.loads((dest / "dataset.json").read_text())["labels"]
    assert len(labels) == 1002 and labels[-1] == ["00001/img00001001.png", label_of(1001)]
    assert (dest / "00001" / "img00001001.png").is_file() and not (dest / "00001" / "img00001002.png").exists()


def test_encode_stores_the_vae_posterior_mean_and_std(layout, tiny_vae):
    from diffusers import AutoencoderKL

    latents = layout / "vae-sd"
    names = [f"00000/img-mean-std-{i:08d}.npy" for i in range(N_BUILTIN)]
    labels = json.loads((latents / "dataset.json").read_text())["labels"]
    assert labels == [[name, label_of(i)] for i, name in enumerate(names)]
    stored = np.stack([np.load(latents / name) for name in names])
    assert stored.dtype == np.float32 and stored.shape == (N_BUILTIN, 8, 4, 4)

    images = np.stack([np.asarray(Image.open(layout / "imagenet_256_vae" / f"00000/img{i:08d}.png"))
                       for i in range(N_BUILTIN)])
    assert np.array_equal(images, render_batch(np.arange(N_BUILTIN), seed=0, resolution=32))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        posterior = AutoencoderKL.from_pretrained(tiny_vae).eval().encode(x).latent_dist
    expected = torch.cat([posterior.mean, posterior.std], dim=1).numpy()
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)


def test_encode_batch_size_does_not_change_the_moments(layout, tiny_vae, tmp_path):
    tool("encode", "--source", str(layout / "imagenet_256_vae"), "--dest", str(tmp_path / "one"),
         "--model-url", str(tiny_vae), "--batch-size", "1", "--max-images", "3")
    for i in range(3):
        name = f"00000/img-mean-std-{i:08d}.npy"
        np.testing.assert_allclose(np.load(tmp_path / "one" / name), np.load(layout / "vae-sd" / name),
                                   rtol=1e-5, atol=1e-5)
    assert len(json.loads((tmp_path / "one" / "dataset.json").read_text())["labels"]) == 3


def test_repa_dataset_returns_image_moments_and_label(layout):
    ds = REPADataset(layout)
    assert len(ds) == N_BUILTIN and ds.image_size == 32 and ds.moments_shape == (8, 4, 4)
    assert ds.num_classes == N_BUILTIN  # labels 0..5 of the 10 built-in classes
    image, moments, label = ds[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image, torch.from_numpy(render_batch([4], resolution=32)[0]).permute(2, 0, 1))
    assert moments.dtype == torch.float32 and moments.shape == (8, 4, 4)
    assert torch.equal(moments, torch.from_numpy(np.load(layout / "vae-sd" / "00000/img-mean-std-00000004.npy")))
    assert label.dtype == torch.int64 and label.ndim == 0 and int(label) == label_of(4)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert [tuple(t.shape) for t in batch] == [(3, 3, 32, 32), (3, 8, 4, 4), (3,)]
    assert is_repa_layout(layout) and resolve_dataset_kind(None, str(layout)) == "repa"
    assert len(build_dataset("repa", str(layout), 32, 10)) == N_BUILTIN
    with pytest.raises(ValueError, match="are 32 px, not --image-size 256"):
        build_dataset("repa", str(layout), 256, 10)


def test_repa_names_and_zip_archives_are_read(layout, tmp_path):
    root = tmp_path / "repa"
    root.mkdir()
    shutil.copytree(layout / "imagenet_256_vae", root / "images")  # REPA's folder name
    tool("convert", "--source", str(layout / "imagenet_256_vae"), "--dest", str(tmp_path / "zipped.zip"),
         "--resolution", "32x32")
    shutil.copytree(layout / "vae-sd", root / "vae-sd")
    reference = REPADataset(layout)
    for images in (root / "images", tmp_path / "zipped.zip"):
        if images.suffix == ".zip":
            shutil.rmtree(root / "images")
            shutil.move(images, root / "imagenet_256_vae.zip")
        ds = REPADataset(root)
        assert len(ds) == N_BUILTIN and ds.labels.tolist() == reference.labels.tolist()
        for got, want in zip(ds[5], reference[5]):
            assert torch.equal(got, want)
    assert not list(tmp_path.glob("*.partial"))
    # a zip archive survives the trip to a DataLoader worker
    loader = torch.utils.data.DataLoader(ds, batch_size=N_BUILTIN, num_workers=1)
    assert torch.equal(next(iter(loader))[0], torch.stack([ds[i][0] for i in range(N_BUILTIN)]))


def test_encode_reads_a_zip_and_labels_follow_the_images(layout, tiny_vae, tmp_path):
    tool("convert", "--source", str(layout / "imagenet_256_vae"), "--dest", str(tmp_path / "imagenet_256_vae.zip"),
         "--resolution", "32x32", "--max-images", "2")
    tool("encode", "--source", str(tmp_path / "imagenet_256_vae.zip"), "--dest", str(tmp_path / "vae-sd"),
         "--vae", str(tiny_vae))
    ds = REPADataset(tmp_path)
    assert len(ds) == 2 and ds.labels.tolist() == [label_of(0), label_of(1)]
    np.testing.assert_allclose(ds[1][1].numpy(), np.load(layout / "vae-sd" / "00000/img-mean-std-00000001.npy"),
                               rtol=1e-5, atol=1e-5)


def _remove(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("damage, message", [
    (lambda r: _remove(r / "vae-sd"), "has no vae-sd/ latent folder; create it with .*encode"),
    (lambda r: _remove(r / "imagenet_256_vae"), r"no imagenet_256_vae/ \(REG\) or images/ \(REPA\)"),
    (lambda r: [_remove(p) for p in (r / "imagenet_256_vae").rglob("*.png")], "no images"),
    (lambda r: _remove(r / "vae-sd" / "00000" / "img-mean-std-00000002.npy"),
     "holds 6 images but .* holds 5 latents"),
    (lambda r: _remove(r / "vae-sd" / "dataset.json"), "dataset.json is missing .*interrupted"),
    (lambda r: (r / "vae-sd" / "dataset.json").write_text("{not json"), "dataset.json is not valid JSON"),
    (lambda r: (r / "vae-sd" / "dataset.json").write_text('{"labels": null}'), "holds no labels"),
    (lambda r: (r / "vae-sd" / "dataset.json").write_text('{"labels": [["00000/x.npy", 1]]}'),
     "has no label for 00000/img-mean-std-00000000.npy"),
])
def test_bad_layouts_are_refused_in_one_line(layout, tmp_path, damage, message):
    root = broken_copy(layout, tmp_path)
    damage(root)
    with pytest.raises(ValueError, match=message) as info:
        REPADataset(root)
    assert "\n" not in str(info.value)


def test_a_corrupt_image_is_named(layout, tmp_path):
    root = broken_copy(layout, tmp_path)
    (root / "imagenet_256_vae" / "00000" / "img00000003.png").write_bytes(b"\x89PNG broken")
    ds = REPADataset(root)
    with pytest.raises(ValueError, match=r"cannot read image .*img00000003.png: .*delete or replace") as info:
        ds[3]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["convert", "--source", "builtin", "--resolution", "16x16"], "needs --max-images"),
    (["convert", "--source", "builtin", "--max-images", "2", "--resolution", "16x8"], "square"),
    (["convert", "--source", "builtin", "--max-images", "0", "--resolution", "16x16"], "--max-images must be"),
    (["convert", "--source", "{tmp}/missing", "--resolution", "16x16"], "does not exist"),
    (["convert", "--source", "{tmp}", "--resolution", "16x16"], "no class sub-folders"),
    (["convert", "--source", "builtin", "--max-images", "2", "--resolution", "16x16", "--dest", "{layout}"],
     "is not empty"),
    (["encode", "--source", "{layout}/imagenet_256_vae", "--vae", "none"], "pixel space"),
    (["encode", "--source", "{tmp}"], "dataset.json is missing .*finished `dataset_tools.py convert` output"),
])
def test_tool_errors_are_one_line(layout, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path, layout=layout) for a in argv]
    if "--dest" not in argv:
        argv += ["--dest", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=message) as info:
        tool(*argv)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_shell_wrappers_pass_environment_variables_as_flags(tiny_vae, tmp_path):
    # A stand-in PYTHON records each command line; running those in-process keeps the test fast.
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\n')
    fake.chmod(0o755)
    data, tools = tmp_path / "data", str(ROOT / "preprocessing" / "dataset_tools.py")
    images, latents = data / "imagenet_256_vae", data / "vae-sd"
    runs = [("dataset_prepare_convert.sh", {"SOURCE": "builtin", "DEST": str(images), "RESOLUTION": "32x32"},
             ["--max-images", "3"], ["convert", "--source=builtin", f"--dest={images}", "--resolution=32x32",
                                     "--transform=center-crop-dhariwal", "--max-images", "3"]),
            ("dataset_prepare_encode.sh", {"SOURCE": str(images), "DEST": str(latents), "VAE": str(tiny_vae)},
             [], ["encode", f"--source={images}", f"--dest={latents}", f"--vae={tiny_vae}"])]
    for script, variables, extra, expected in runs:
        env = {**os.environ, **variables, "PYTHON": str(fake), "RECORD": str(tmp_path / "argv")}
        proc = subprocess.run(["bash", str(ROOT / "preprocessing" / script), *extra], env=env, capture_output=True,
                              text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "argv").read_text().splitlines() == [tools, *expected]
        tool(*expected)
    assert len(REPADataset(data)) == 3 and REPADataset(data).image_size == 32
    proc = subprocess.run(["bash", str(ROOT / "preprocessing" / "dataset_prepare_encode.sh")], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k not in ("SOURCE", "DEST")})
    assert proc.returncode != 0 and "set SOURCE" in proc.stderr


def test_cli_prints_one_error_line_and_exits_2(layout, tmp_path, capsys):
    argv = ["encode", "--source", str(layout / "vae-sd"), "--dest", str(tmp_path / "again")]
    with pytest.raises(SystemExit) as info:
        run_cli(main, parse_args(argv))
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: no images in ") and "convert output" in line
