"""Improved precision/recall with ADM's ManifoldEstimator semantics, on features with hand-computed answers."""

import numpy as np
import pytest
import torch

from evaluations.precision_recall import manifold_radii, pairwise_distances, precision_recall


def on_a_line(values, dim: int = 8, scale: float = 1.0) -> np.ndarray:
    """Points ``values * scale`` on the first axis of a ``dim``-d space (squared distances are exact integers)."""
    x = np.zeros((len(values), dim), np.float32)
    x[:, 0] = np.asarray(values, np.float32) * scale
    return x


REFERENCE = [0, 1, 2, 3, 4]
SAMPLES = [4, 5, 6, 7, 20, 21, 22, 23]
# Squared radii (k = 3: the 4th smallest squared distance, the point itself included):
#   reference 0: {0, 1, 4, 9, 16} -> 9;  1, 2, 3: 4;  4: 9
#   samples   4: {0, 1, 4, 9, ...} -> 9;  5, 6: 4;  7: 9;  20: 9;  21, 22: 4;  23: 9
# Precision: samples 4 (d=0), 5 (1 <= 9), 6 (4 <= 9), 7 (9 <= 9, on the boundary) lie in ball(4); 20..23 in none: 4/8.
# Recall: reference 1 (9 <= r(4) = 9, boundary), 2, 3, 4 lie in ball(sample 4); 0 (16 > 9) in none: 4/5.


def test_partial_overlap_matches_hand_computation():
    assert precision_recall(on_a_line(REFERENCE), on_a_line(SAMPLES), device="cpu") == (0.5, 0.8)


def test_radii_are_the_kth_neighbour_with_the_point_itself_counted():
    radii = manifold_radii(torch.from_numpy(on_a_line(REFERENCE)))
    assert radii.tolist() == [9.0, 4.0, 4.0, 4.0, 9.0]


def test_blocks_do_not_change_the_answer():
    ref, samples = on_a_line(REFERENCE), on_a_line(SAMPLES)
    assert precision_recall(ref, samples, row_batch_size=2, col_batch_size=3, device="cpu") == (0.5, 0.8)


def test_identical_sets_give_one_and_far_clusters_give_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 32)).astype(np.float32)
    assert precision_recall(x, x, device="cpu") == (1.0, 1.0)
    assert precision_recall(x, x + 100.0, device="cpu") == (0.0, 0.0)


def test_float16_overflow_falls_back_to_float32():
    # Scaled by 1000 the squared norms (up to 5.3e8) overflow float16; the float32 values are exact.
    ref, samples = on_a_line(REFERENCE, scale=1000), on_a_line(SAMPLES, scale=1000)
    block = pairwise_distances(torch.from_numpy(ref), torch.from_numpy(samples))
    assert block.dtype == torch.float32 and block[0, -1].item() == 23000.0**2
    assert precision_recall(ref, samples, device="cpu") == (0.5, 0.8)


def test_distances_round_like_adms_float16():
    # ADM computes |u|^2 - 2 u.v + |v|^2 in float16: for u = 100, v = 100.5 each step rounds to a multiple
    # of 8 (|v|^2 = 10100.25 -> 10104, u.v = 10050 -> 10048), so the squared distance is 8, not 0.25.
    d = pairwise_distances(torch.tensor([[100.0]]), torch.tensor([[100.5]]))
    assert d.item() == 8.0


def _brute_force(ref: np.ndarray, samples: np.ndarray, k: int = 3) -> tuple[float, float]:
    """The definition in float64 with full sorts: radius = k-th neighbour, the point itself at index 0."""
    ref, samples = ref.astype(np.float64), samples.astype(np.float64)

    def radii(x):
        return np.sort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, k]

    d = ((ref[:, None] - samples[None]) ** 2).sum(-1)
    return float(np.mean((d <= radii(ref)[:, None]).any(0))), float(np.mean((d <= radii(samples)[None]).any(1)))


def test_matches_a_brute_force_definition_on_random_features():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(40, 6)).astype(np.float32)
    samples = (rng.normal(size=(30, 6)) * 1.3 + 0.4).astype(np.float32)
    # float16 distances (ADM) may move a point that sits within 0.1% of a boundary: one point at most here.
    got = precision_recall(ref, samples, row_batch_size=7, col_batch_size=9, device="cpu")
    assert got == pytest.approx(_brute_force(ref, samples), abs=1 / 30 + 1e-12)
    # Scaled up, float16 overflows and the float32 path must agree exactly.
    got = precision_recall(ref * 1000, samples * 1000, row_batch_size=7, col_batch_size=9, device="cpu")
    assert got == _brute_force(ref * 1000, samples * 1000)


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(on_a_line([0, 1, 2]), on_a_line(SAMPLES), device="cpu")
