"""DMD2's COCO FID (evaluations/coco.py): clean-fid's "clean" resize against its own output
(tests/fixtures/record_clean_fid.py), DMD2's crop and Lanczos resize, and the FID of a generated set against a
folder of reference images, with a stand-in Inception."""

from pathlib import Path

import numpy as np
import pytest
from eval_stand_in import StandInInception, random_images
from PIL import Image

from evaluations.coco import clean_resize, coco_fid, dmd2_transform

REF = np.load(Path(__file__).parent / "fixtures" / "clean_fid_reference.npz")


@pytest.mark.parametrize("index", [0, 1])
def test_clean_resize_is_clean_fids(index):
    resized = clean_resize(REF[f"image{index}"])
    assert resized.shape == (299, 299, 3) and resized.dtype == np.float32
    np.testing.assert_array_equal(resized[REF["rows"]], REF[f"rows{index}"])


def test_dmd2s_transform_crops_the_long_edge_and_resizes_or_takes_a_patch():
    wide = np.zeros((40, 60, 3), np.uint8)
    wide[:, 10:50] = 255  # the centre 40 x 40 is white, the edges black
    out = dmd2_transform(wide, eval_res=32)
    assert out.shape == (32, 32, 3) and out.min() == 255
    big = random_images(1, size=320)[0]
    np.testing.assert_array_equal(dmd2_transform(big, None, patch=True), big[10:309, 10:309])
    small = random_images(1, size=64)[0]
    np.testing.assert_array_equal(dmd2_transform(small, 256, patch=True), small)  # too small for a patch: as is


def test_coco_fid_of_the_reference_images_themselves_is_zero(tmp_path):
    images = random_images(12, size=48, seed=3)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"COCO_val2014_{i:012d}.png")
    model = StandInInception()
    assert coco_fid(images, str(tmp_path), model, eval_res=32) == pytest.approx(0.0, abs=1e-6)
    assert coco_fid(random_images(12, size=48, seed=4), str(tmp_path), model, eval_res=32) > 1e-3
    with pytest.raises(ValueError, match="no such folder"):
        coco_fid(images, str(tmp_path / "val2014"), model, eval_res=32)


def test_clip_score_is_dmd2s(tiny_clip):
    """DMD2's compute_clip_score, written out as it is (crop, Lanczos 256, the preprocessor, "A photo depicts "
    spliced in after the start token, cut to 77 with the end token forced, mean cosine similarity)."""
    import torch

    from evaluations.coco import clip_score

    model, preprocess, tokenizer = tiny_clip
    images = random_images(5, size=40, seed=7)
    captions = ["a cat on a mat", "two dogs", "a red disc " * 30, "a kitchen", ""]
    imgs = torch.stack([preprocess(Image.fromarray(dmd2_transform(im, 256))) for im in images])
    tokens = tokenizer(captions)
    prepend = tokenizer(["A photo depicts "])[:, 1:4].expand(tokens.shape[0], -1)
    new = torch.cat([tokens[:, :1], prepend, tokens[:, 1:]], dim=1)[:, :77]
    last_cols = new[:, 77 - 1:77]
    last_cols[last_cols > 0] = 49407
    new = torch.cat([new[:, :76], last_cols], dim=1)
    with torch.no_grad():
        expected = torch.nn.functional.cosine_similarity(model.encode_image(imgs), model.encode_text(new), dim=1).mean()
    assert clip_score(images, captions, model, preprocess, tokenizer, batch_size=2) == pytest.approx(float(expected),
                                                                                                     abs=1e-6)
    assert new[2, 76] == 49407 and new[0, 1:4].tolist() == [320, 1125, 29340]
