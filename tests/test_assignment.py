"""The linear sum assignment solver against scipy's optimal costs (tests/fixtures/rtdetr_matcher.pt)."""
import itertools

import numpy as np
import pytest
import torch
from conftest import load_fixture, seeded_uniform

from lightdet.losses.assignment import linear_sum_assignment

KINDS = {"u10": lambda u: 10 * u, "pm3": lambda u: 6 * u - 3, "int10q": lambda u: torch.floor(10 * u ** 0.25)}


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("rtdetr_matcher.pt")


def check_assignment(cost, rows, cols, total):
    """min(n, m) pairs, no row or column twice, rows ascending, and the optimal total."""
    assert len(rows) == len(cols) == min(cost.shape)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert (np.diff(rows) > 0).all()
    assert abs(cost[rows, cols].sum() - total) <= 1e-9


def test_stored_cases(fixture):
    for case in fixture["cases"]:
        cost = case["cost"].numpy()
        if case["kind"] in KINDS:   # the stored matrix is the seeded one
            assert torch.equal(KINDS[case["kind"]](seeded_uniform(f"matcher:{case['name']}", case["shape"])),
                               case["cost"])
        rows, cols = linear_sum_assignment(cost)
        check_assignment(cost, rows, cols, case["total"])
        if case["second_best_gap"]:   # a unique optimum: the very same pairs as scipy
            assert rows.tolist() == case["rows"].tolist() and cols.tolist() == case["cols"].tolist(), case["name"]


def test_regenerated_random_cases(fixture):
    assert len(fixture["random_cases"]) == 600
    for key, shape, kind, total in fixture["random_cases"]:
        cost = KINDS[kind](seeded_uniform(key, shape)).numpy()
        check_assignment(cost, *linear_sum_assignment(cost), total)


def test_brute_force_on_small_matrices():
    rng = np.random.default_rng(0)
    for n, m in [(3, 3), (2, 5), (5, 2), (4, 4), (1, 4)]:
        cost = rng.normal(size=(n, m))
        small, large = sorted((n, m))
        best = min(sum(cost[i, j] if n <= m else cost[j, i] for i, j in zip(range(small), perm))
                   for perm in itertools.permutations(range(large), small))
        check_assignment(cost, *linear_sum_assignment(cost), best)


def test_takes_torch_tensors_and_rejects_non_finite_costs():
    rows, cols = linear_sum_assignment(torch.tensor([[4.0, 1.0], [2.0, 8.0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    with pytest.raises(ValueError, match="NaN or infinite"):
        linear_sum_assignment(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        linear_sum_assignment(np.zeros(3))
