"""The ``diversity`` filter: shingle Jaccard, MinHash, the greedy order, rewards, inputs, errors."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from gfpo_filters import FilterParameterError, GFPOFilterWarning, GroupInputError, Groups, load_filter
from gfpo_filters.filters.diversity import (
    AUTO_EXACT_MAX_SHINGLES,
    greedy_order,
    jaccard_exact,
    jaccard_minhash,
    order_to_scores,
    shingle_hashes,
    similarity_matrices,
)
from gfpo_filters.selection import topk_mask

WORD = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------------- independent references
def py_shingles(seq: list, n: int) -> set:
    s = {tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)}
    return s if s or not seq else {tuple(seq)}


def py_jaccard(seqs: list[list], n: int) -> np.ndarray:
    sets = [py_shingles(s, n) for s in seqs]
    g = len(sets)
    out = np.ones((g, g))
    for a in range(g):
        for b in range(g):
            union = len(sets[a] | sets[b])
            out[a, b] = len(sets[a] & sets[b]) / union if union else 1.0
    return out


def py_greedy(sim: np.ndarray, objective: str, bonus=None, tier=None) -> list[int]:
    """Plain-Python greedy, written from the documented definition."""
    g = len(sim)
    bonus = [0.0] * g if bonus is None else list(bonus)
    tier = [0] * g if tier is None else list(tier)
    gap = 2.0 + 2.0 * max(max(bonus), 0.0)
    chosen: list[int] = []
    cur = [0.0] * g
    for t in range(g):
        best, best_val = None, None
        for c in range(g):
            if c in chosen:
                continue
            if t == 0:
                gain = sum(sim[i][c] for i in range(g)) / g
            elif objective == "maxmin":
                gain = 1.0 - cur[c]
            else:
                gain = sum(max(0.0, sim[i][c] - cur[i]) for i in range(g)) / g
            val = tier[c] * gap + bonus[c] + gain
            if best_val is None or val > best_val + 1e-12:
                best, best_val = c, val
        chosen.append(best)
        cur = [max(cur[i], sim[best][i]) for i in range(g)]
    return chosen


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


# ---------------------------------------------------------------------- similarity
def test_jaccard_hand_computed_on_words():
    texts = ["a b c d", "a b c e", "x y", "A B C D!", "a", "a", ""]
    sim = similarity_matrices(Groups([texts], [[1.0] * 7]), ngram=2, similarity="jaccard", unit="words")[0]
    # bigrams: {ab, bc, cd} vs {ab, bc, ce}: 2 shared of 4 distinct
    assert sim[0, 1] == pytest.approx(0.5)
    assert sim[0, 2] == 0.0
    # lower-cased words plus punctuation: {ab, bc, cd, d!}: 3 shared with text 0 of 4
    assert sim[0, 3] == pytest.approx(0.75)
    # shorter than ngram: the whole sequence is one shingle
    assert sim[4, 5] == 1.0 and sim[4, 0] == 0.0
    # the empty completion: similar only to itself
    assert sim[6, 6] == 1.0 and sim[6, :6].sum() == 0.0
    assert np.allclose(np.diag(sim), 1.0) and np.allclose(sim, sim.T)


@pytest.mark.parametrize("ngram", [1, 2, 3, 5])
def test_exact_jaccard_matches_python_sets_on_several_groups(ngram):
    rng = np.random.default_rng(ngram)
    n, g = 5, 7  # G not a power of two, several groups in one product
    ids = [[list(rng.integers(0, 6, rng.integers(0, 25))) for _ in range(g)] for _ in range(n)]
    ids[1][3] = list(ids[1][2])  # an exact duplicate
    groups = Groups([[""] * g] * n, np.ones((n, g)), completion_ids=ids)
    sim = similarity_matrices(groups, ngram=ngram, similarity="jaccard")
    expected = np.stack([py_jaccard([list(map(int, s)) for s in grp], ngram) for grp in ids])
    np.testing.assert_allclose(sim, expected, rtol=0, atol=1e-12)


def test_minhash_estimates_jaccard_and_is_exact_at_0_and_1():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 50_000, 1500)
    docs = [base.copy() for _ in range(6)]
    for j, frac in enumerate([0.0, 0.02, 0.1, 0.3, 0.6]):
        m = rng.random(base.size) < frac
        docs[j][m] = rng.integers(0, 50_000, int(m.sum()))
    docs[5] = rng.integers(50_000, 100_000, 1500)  # disjoint vocabulary
    docs.append(docs[0].copy())
    groups = Groups([[""] * 7], [[1.0] * 7], completion_ids=[docs])
    exact = similarity_matrices(groups, similarity="jaccard")[0]
    est = similarity_matrices(groups, similarity="minhash", num_perm=256)[0]
    assert est[0, 6] == 1.0 and exact[0, 6] == 1.0
    assert est[5, :5].max() == 0.0
    err = np.abs(est - exact)
    assert err.mean() < 0.03 and err.max() < 0.15  # standard error <= 0.5 / sqrt(256) = 0.031
    other = similarity_matrices(groups, similarity="minhash", num_perm=256, seed=7)[0]
    assert not np.array_equal(other, est)  # the seed picks the hash function
    assert np.array_equal(similarity_matrices(groups, similarity="jaccard", seed=7)[0], exact)


def test_auto_switches_to_minhash_for_long_completions():
    rng = np.random.default_rng(1)
    short = [[list(rng.integers(0, 20, 30)) for _ in range(4)]]
    long = [[list(rng.integers(0, 20, AUTO_EXACT_MAX_SHINGLES + 50)) for _ in range(4)]]
    for ids, expected in ((short, "jaccard"), (long, "minhash")):
        groups = Groups([[""] * 4], [[1.0] * 4], completion_ids=ids)
        auto = similarity_matrices(groups, similarity="auto")
        assert np.array_equal(auto, similarity_matrices(groups, similarity=expected))


def test_huge_token_ids_need_no_vocabulary_sized_memory():
    big = 10**15  # any array indexed by token id would not fit in memory
    ids = [[[big + 1, big + 2, big + 3, big + 4], [big + 1, big + 2, big + 3, big + 9], [5, 6, 7, 8]]]
    sim = similarity_matrices(Groups([[""] * 3], [[1.0] * 3], completion_ids=ids), ngram=2, similarity="jaccard")
    assert sim[0, 0, 1] == pytest.approx(0.5) and sim[0, 0, 2] == 0.0


def test_shingles_never_span_two_completions():
    # "c d" would be a shared bigram if the sequences were concatenated without padding
    values = np.array([1, 2, 3, 4, 3, 4], dtype=np.int64)
    hashes, doc = shingle_hashes(values, np.array([3, 3]), 2)
    assert doc.tolist() == [0, 0, 1, 1]
    sim = jaccard_exact(hashes, doc, 1, 2)
    assert sim[0, 0, 1] == 0.0  # {12, 23} vs {43, 34}: (3, 4) does not cross from doc 0 into doc 1
    assert jaccard_minhash(hashes, doc, 1, 2, 64)[0, 0, 1] == 0.0


# ---------------------------------------------------------------------- greedy order
@pytest.mark.parametrize("objective", ["maxmin", "facility_location"])
def test_topk_equals_greedy_set_for_every_k(objective):
    rng = np.random.default_rng(3)
    n, g = 6, 9
    x = rng.random((n, g, 4))
    sim = np.exp(-((x[:, :, None, :] - x[:, None, :, :]) ** 2).sum(-1))  # symmetric, 1 on the diagonal
    bonus = rng.random((n, g)) * 0.5
    tier = rng.integers(0, 3, (n, g))
    for b, t in ((None, None), (bonus, None), (bonus, tier)):
        order = greedy_order(sim, objective, bonus=b, tier=t)
        scores = order_to_scores(order)
        for i in range(n):
            gap_b = None if b is None else b[i]
            gap_t = None if t is None else t[i]
            assert order[i].tolist() == py_greedy(sim[i], objective, gap_b, gap_t)
        for k in range(1, g + 1):
            mask = topk_mask(scores, k)
            for i in range(n):
                assert set(np.flatnonzero(mask[i])) == set(order[i, :k].tolist())


@pytest.mark.parametrize("objective", ["maxmin", "facility_location"])
def test_filter_matches_python_greedy_on_text(objective):
    rng = np.random.default_rng(5)
    vocab = "the a cat dog sat ran on mat log fast slow red".split()
    groups = [[" ".join(rng.choice(vocab, rng.integers(3, 12))) for _ in range(8)] for _ in range(4)]
    groups[0][5] = groups[0][1]
    f = load_filter("diversity", ngram=2, objective=objective, similarity="jaccard")
    scores = np.array(f(groups, np.ones((4, 8))))
    for i, texts in enumerate(groups):
        expected = py_greedy(py_jaccard([words(t) for t in texts], 2), objective)
        assert np.argsort(-scores[i], kind="stable").tolist() == expected
        for k in range(1, 9):
            assert set(np.argsort(-scores[i], kind="stable")[:k]) == set(expected[:k])


def test_hand_made_group_with_duplicates_and_diverse_members():
    a = "the train leaves at nine and arrives at noon so it takes three hours"
    a_near = "the train leaves at nine and arrives at noon so it takes 3 hours"
    b = "compute 12 times 4 to get 48 then subtract 6 for 42"
    c = "apples cost two dollars each , she buys five , total ten"
    texts = [a, a, b, a_near, c]
    for objective in ("maxmin", "facility_location"):
        f = load_filter("diversity", objective=objective)
        scores = f([texts], [[1.0] * 5])[0]
        # medoid first (a, lowest index of the tie), then b and c (distance 1, lowest index first),
        # then the near-duplicate, and the exact copy last
        assert scores == [5.0, 1.0, 4.0, 2.0, 3.0], objective
        kept = np.flatnonzero(topk_mask(np.array([scores]), 3)[0]).tolist()
        assert kept == [0, 2, 4]


def test_identical_group_keeps_position_order():
    scores = load_filter("diversity")([["same text here"] * 4], [[0.0] * 4])[0]
    assert scores == [4.0, 3.0, 2.0, 1.0]


# ---------------------------------------------------------------------- rewards
def test_nan_rewards_never_ranked_above_scorable_ones():
    texts = ["alpha beta gamma delta", "alpha beta gamma delta", "totally different words here", "x y z w v"]
    f = load_filter("diversity")
    scores = np.array(f([texts], [[1.0, 1.0, None, float("nan")]])[0])
    assert scores[:2].min() > scores[2:].max()
    # among the scorable ones it is the greedy order of the scorable ones
    assert scores[0] > scores[1]


def test_reward_threshold_keeps_correct_ones_first():
    a = "one two three four five six"
    texts = [a, a + " seven", "nine ten eleven twelve", "thirteen fourteen fifteen sixteen"]
    f = load_filter("diversity", reward_threshold=1.0)
    scores = np.array(f([texts], [[1.0, 1.0, 0.0, 0.0]])[0])
    assert set(np.flatnonzero(topk_mask(scores[None], 2)[0])) == {0, 1}  # both correct, though similar
    plain = np.array(load_filter("diversity")([texts], [[1.0, 1.0, 0.0, 0.0]])[0])
    assert set(np.flatnonzero(topk_mask(plain[None], 2)[0])) != {0, 1}


def test_reward_weight_trades_diversity_for_reward():
    a = "one two three four five six seven eight"
    near = "one two three four five six seven nine"  # J = 5/7 with a
    far = "completely unrelated sentence about other things"
    texts = [a, near, far]
    rewards = [[1.0, 1.0, 0.0]]
    pure = load_filter("diversity")([texts], rewards)[0]
    assert np.argsort(pure)[::-1][:2].tolist() == [0, 2]  # the distant one second
    weighted = load_filter("diversity", reward_weight=1.0)([texts], rewards)[0]
    # second pick: near gets 1 - 5/7 + 1.0 = 1.29 > far's 1.0 + 0
    assert np.argsort(weighted)[::-1][:2].tolist() == [0, 1]


# ---------------------------------------------------------------------- inputs
def test_message_list_completions_score_like_their_text():
    texts = ["first answer is 4", "second answer is 5", "first answer is 4"]
    messages = [[{"role": "assistant", "content": t}] for t in texts]
    f = load_filter("diversity", ngram=2)
    assert f([messages], [[1, 1, 1]]) == f([texts], [[1, 1, 1]])


def test_token_ids_as_lists_arrays_and_tensors_agree_and_are_used():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    ids = [[list(map(int, rng.integers(0, 5, 12))) for _ in range(5)] for _ in range(2)]
    texts = [["identical text"] * 5] * 2  # the text would make every completion a duplicate
    f = load_filter("diversity", ngram=2, similarity="jaccard")
    from_lists = f(texts, np.ones((2, 5)), completion_ids=ids)
    from_arrays = f(texts, np.ones((2, 5)), completion_ids=[[np.array(x) for x in grp] for grp in ids])
    flat_tensor = torch.tensor([x for grp in ids for x in grp])  # (n*G, L), as a trainer may pass it
    from_tensors = f(texts, np.ones((2, 5)), completion_ids=flat_tensor)
    assert from_lists == from_arrays == from_tensors
    for i in range(2):
        expected = py_greedy(py_jaccard(ids[i], 2), "maxmin")
        assert np.argsort(-np.array(from_lists[i]), kind="stable").tolist() == expected
    # unit="words" ignores the ids
    assert load_filter("diversity", unit="words")(texts, np.ones((2, 5)), completion_ids=ids)[0] == [5, 4, 3, 2, 1]


def test_unit_ids_without_ids_is_a_clear_error():
    with pytest.raises(GroupInputError, match=r"diversity.*unit='ids'.*completion_ids"):
        load_filter("diversity", unit="ids")([["a b", "c d"]], [[1, 1]])


def test_non_integer_token_ids_name_the_completion():
    ids = [[[1, 2, 3], np.array([1.5, 2.0])]]
    with pytest.raises(GroupInputError, match=r"completion_ids\[0\]\[1\].*integer"):
        load_filter("diversity")([["a", "b"]], [[1, 1]], completion_ids=ids)


def test_chars_unit():
    sim = similarity_matrices(Groups([["abcd", "abce", "zzzz"]], [[1, 1, 1]]), ngram=3, unit="chars")[0]
    assert sim[0, 1] == pytest.approx(1 / 3) and sim[0, 2] == 0.0  # {abc, bcd} vs {abc, bce}


def test_empty_completions_warn_and_rank_as_duplicates_of_each_other():
    f = load_filter("diversity")
    with pytest.warns(GFPOFilterWarning, match=r"diversity.*2 empty completion.*group 0, completion 1"):
        scores = f([["some words here", "", "other words there", ""]], [[1, 1, 1, 1]])[0]
    assert min(scores[1], scores[3]) == 1.0  # the second empty one is a duplicate: picked last


def test_scores_are_deterministic_across_calls_and_instances():
    rng = np.random.default_rng(9)
    vocab = "a b c d e f g h".split()
    groups = [[" ".join(rng.choice(vocab, 40)) for _ in range(6)] for _ in range(3)]
    f = load_filter("diversity", similarity="minhash", seed=3)
    first = f(groups, np.ones((3, 6)))
    assert f(groups, np.ones((3, 6))) == first
    assert load_filter("diversity", similarity="minhash", seed=3)(groups, np.ones((3, 6))) == first


@pytest.mark.parametrize(
    "params, name",
    [
        ({"ngram": 0}, "ngram"),
        ({"ngram": 2.5}, "ngram"),
        ({"ngram": True}, "ngram"),
        ({"similarity": "cosine"}, "similarity"),
        ({"objective": "dpp"}, "objective"),
        ({"reward_weight": -1}, "reward_weight"),
        ({"reward_weight": float("nan")}, "reward_weight"),
        ({"reward_weight": "high"}, "reward_weight"),
        ({"reward_threshold": float("inf")}, "reward_threshold"),
        ({"unit": "bytes"}, "unit"),
        ({"num_perm": 4}, "num_perm"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_name_the_filter_and_parameter(params, name):
    with pytest.raises(FilterParameterError, match=rf"'diversity'.*'{name}'"):
        load_filter("diversity", **params)


def test_registered_with_documented_defaults():
    f = load_filter("diversity")
    assert f.params == {
        "ngram": 3,
        "similarity": "auto",
        "objective": "maxmin",
        "reward_weight": 0.0,
        "reward_threshold": None,
        "unit": "auto",
        "num_perm": 128,
        "seed": 0,
    }
    assert f.deterministic


# ---------------------------------------------------------------------- real data
def test_fewer_near_duplicates_than_random_on_gsm8k(data_dir):
    from gfpo_filters.rollouts import read_rollouts, to_groups

    rollouts = read_rollouts(data_dir / "gsm8k_g4.jsonl")
    groups = to_groups(rollouts)
    sim = np.stack([py_jaccard([words(t) for t in grp], 3) for grp in groups.completions])
    iu = np.triu_indices(4, 1)
    pairs = sim[:, iu[0], iu[1]]
    kept = load_filter("diversity", unit="words").select(groups, 2)
    both = kept[:, iu[0]] & kept[:, iu[1]]
    expected_random = (pairs > 0.5).sum() * (2 * 1) / (4 * 3)
    assert (pairs[both] > 0.5).sum() < 0.5 * expected_random
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty completions in this data set
        load_filter("diversity", unit="words").score_groups(groups)


# ---------------------------------------------------------------------- words (gfpo_filters.ngrams)
def _py_word_hash(word: str) -> int:
    """The documented word hash, with Python ints."""
    m = (1 << 64) - 1

    def mix(x: int) -> int:
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
        return x ^ (x >> 31)

    b = word.encode("utf-8", "surrogatepass")
    chunks = [int.from_bytes(b[i : i + 8].ljust(8, b"\0"), "little") for i in range(0, len(b), 8)]
    h = mix(chunks[0])
    for c in chunks[1:]:
        h = mix(h ^ c)
    return h


def test_word_hashes_split_like_the_regex_and_hash_the_bytes():
    from gfpo_filters.ngrams import WORD_PATTERN, word_hashes

    texts = [
        "Hello, world!  x_1=2.5",
        "",
        "naïve café — déjà vu… 数学 ９ abcdefghijklmnopqrstuvwxyz0123456789_long",
        "a\u00a0b\u2003c\x1cd",  # Unicode spaces and \x1c are \s: they separate words
        "İstanbul ΣΑΣ 🙂🙂 a🙂b",
        "\x00 tab\tend\n",
    ]
    rng = np.random.default_rng(0)
    alphabet = list("ab _.,\n\t9é—数\u00a0🙂İ")
    texts += ["".join(rng.choice(alphabet, int(rng.integers(0, 30)))) for _ in range(200)]
    hashes, counts = word_hashes(texts)
    words = [re.findall(WORD_PATTERN, t.lower()) for t in texts]
    assert counts.tolist() == [len(w) for w in words]
    assert hashes.tolist() == [_py_word_hash(w) for ws in words for w in ws]
    assert word_hashes(["ABC abc"], lowercase=False)[0][0] != word_hashes(["ABC abc"], lowercase=False)[0][1]
