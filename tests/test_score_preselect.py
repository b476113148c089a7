import numpy as np
import pytest

from ntk_selector.io.store import DONE, EMPTY
from ntk_selector.selection.preselect import default_m_k, reverse_knn
from ntk_selector.selection.score import domain_direction, score_rows, top_n


def test_score_is_mean_of_pairwise_inner_products():
    rng = np.random.default_rng(0)
    dom, pool = rng.normal(size=(7, 16)), rng.normal(size=(30, 16))
    st_d, st_p = np.full(7, DONE, np.uint8), np.full(30, DONE, np.uint8)
    st_p[4] = EMPTY
    got = score_rows(pool, st_p, domain_direction(dom, st_d, False, block_rows=3), False, block_rows=8)
    expect = np.array([[c @ d for d in dom] for c in pool]).mean(1)
    assert np.isnan(got[4])
    ok = np.arange(30) != 4
    assert np.allclose(got[ok], expect[ok])
    cos = score_rows(pool, st_p, domain_direction(dom, st_d, True), True)
    expect_cos = np.array([[c @ d / np.linalg.norm(c) / np.linalg.norm(d) for d in dom] for c in pool]).mean(1)
    assert np.allclose(cos[ok], expect_cos[ok])


def test_domain_rows_without_response_are_ignored():
    dom = np.array([[1.0, 0.0], [100.0, 100.0]])
    direction = domain_direction(dom, np.array([DONE, EMPTY], np.uint8), False)
    assert np.allclose(direction, [1.0, 0.0])


def test_top_n_order_ties_and_nan():
    s = np.array([0.5, np.nan, 0.9, 0.5, 0.1])
    assert top_n(s, 3).tolist() == [2, 0, 3]
    assert top_n(s, 10).tolist() == [2, 0, 3, 4]


def test_reverse_knn_votes_hand_made():
    # pool on the unit circle at angles 0, 10, 20, 90, 180 degrees; domain at 5 and 95 degrees
    ang = np.deg2rad([0, 10, 20, 90, 180])
    pool = np.stack([np.cos(ang), np.sin(ang)], 1) * np.array([[1], [2], [3], [1], [5]])  # norms must not matter
    dom = np.stack([np.cos(np.deg2rad([4, 95])), np.sin(np.deg2rad([4, 95]))], 1)
    res = reverse_knn(dom, pool, m=3, k=2, knn_search="flat")
    # domain 4deg votes for 0 and 10; domain 95deg votes for 90 (5 deg away) and 20 (75 deg; 10 and 180 are 85)
    assert res.votes.tolist() == [1, 1, 1, 1, 0]
    # equal votes: best similarity decides: 0 (cos 4) > 90 (cos 5) > 10 (cos 6) > 20 (cos 75)
    assert res.order.tolist() == [0, 3, 1]
    assert res.best_sim[4] == -np.inf


def test_reverse_knn_exact_ties_go_to_lower_index():
    pool = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    dom = np.array([[1.0, 0.0], [0.0, 1.0]])
    res = reverse_knn(dom, pool, m=4, k=2, knn_search="flat")
    assert res.votes.tolist() == [1, 1, 1, 1]
    assert res.order.tolist() == [0, 1, 2, 3]


def test_reverse_knn_vote_counts_and_validity():
    pool = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.01]])
    dom = np.array([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]])
    res = reverse_knn(dom, pool, m=2, k=1, pool_valid=np.array([True, True, True, False]))
    assert res.votes.tolist() == [2, 0, 1, 0]
    assert res.order.tolist() == [0, 2]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_on_easy_case(kind):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 32))
    pool = np.concatenate([c + 0.05 * rng.normal(size=(200, 32)) for c in centers]).astype(np.float32)
    dom = (centers[1] + 0.05 * rng.normal(size=(10, 32))).astype(np.float32)
    exact = reverse_knn(dom, pool, m=50, k=20, knn_search="flat")
    approx = reverse_knn(dom, pool, m=50, k=20, knn_search=kind)
    # every vote lands in the domain's cluster, and each domain row casts K votes
    assert set(approx.order) <= set(range(200, 400))
    assert approx.votes.sum() == exact.votes.sum() == 10 * 20


def test_default_m_k():
    assert default_m_k(10, 1000) == (40, 10)
    assert default_m_k(10, 25) == (25, 6)
    assert default_m_k(10, 1000, m=100, k=3) == (100, 3)


def test_max_cosine_rule_matches_a_dense_reference():
    """The LESS-style rule (score.max_cosine_rows): max over done domain rows of the cosine, NaN for pool rows
    without response tokens, the same in small blocks as in one."""
    from ntk_selector.io.store import DONE, EMPTY
    from ntk_selector.selection.score import max_cosine_rows

    rng = np.random.default_rng(3)
    dom, pool = rng.normal(size=(5, 16)), rng.normal(size=(40, 16))
    d_status = np.array([DONE, DONE, EMPTY, DONE, DONE], dtype=np.uint8)
    p_status = np.full(40, DONE, dtype=np.uint8)
    p_status[[3, 17]] = EMPTY

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    want = (unit(pool) @ unit(dom[d_status == DONE]).T).max(1)
    want[[3, 17]] = np.nan
    for block_mb in (256, 0):  # 0: one row per block
        np.testing.assert_allclose(max_cosine_rows(pool, p_status, dom, d_status, block_mb), want, rtol=1e-12)
