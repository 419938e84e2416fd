"""The ``learned`` filter and the built-in scorer: training, checkpoints, wrapped models, errors."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from gfpo_filters import FilterOutputError, FilterParameterError, GroupInputError, load_filter  # noqa: E402
from gfpo_filters.cli import main as cli_main  # noqa: E402
from gfpo_filters.filters.learned import CompletionBatch  # noqa: E402
from gfpo_filters.filters.learned.features import FeatureConfig, featurize  # noqa: E402
from gfpo_filters.filters.learned.model import FORMAT_VERSION, ScorerCheckpointError  # noqa: E402
from gfpo_filters.filters.learned.report import roc_auc, within_group_auc  # noqa: E402
from gfpo_filters.filters.learned.training import split_by_prompt, train_scorer  # noqa: E402
from gfpo_filters.rollouts import RolloutGroup, write_rollouts  # noqa: E402

FILLER = "the a of to and in is it that for on with as was at by an be this from or".split()
SMALL = FeatureConfig(n_buckets=1 << 12, ngram_max=2)


def synthetic(n_prompts: int, g: int = 4, seed: int = 0):
    """Rollouts where the reward is 1 exactly when the completion contains the word 'banana'."""
    rng = np.random.default_rng(seed)
    groups = []
    for p in range(n_prompts):
        texts, rewards = [], []
        for _ in range(g):
            words = list(rng.choice(FILLER, rng.integers(8, 30)))
            good = rng.random() < 0.5
            if good:
                words.insert(int(rng.integers(0, len(words))), "banana")
            texts.append(" ".join(words))
            rewards.append(float(good))
        groups.append(RolloutGroup(f"prompt {p}", p, texts, rewards, rewards))
    return groups


def confounded(n_prompts: int, g: int = 4, seed: int = 0):
    """A marker word ('zq') decides the winner within each group, while length and prompt difficulty
    vary: easy prompts have long completions, mostly right; hard ones short, mostly wrong; within a
    group the right ones are longer in half of the prompts and shorter in the others."""
    rng = np.random.default_rng(seed)
    texts, rewards, keys = [], [], []
    for p in range(n_prompts):
        easy = p % 2 == 0
        n_good = int(rng.integers(2, g)) if easy else int(rng.integers(1, g - 1))
        good_longer = rng.random() < 0.5
        for j in range(g):
            good = j < n_good
            n = int(rng.integers(30, 40) if easy else rng.integers(8, 14)) + (6 if good == good_longer else 0)
            words = list(rng.choice(FILLER, n))
            if good:
                words[int(rng.integers(0, n))] = "zq"  # as long as a filler word
            texts.append(" ".join(words))
            rewards.append(float(good))
            keys.append(p)
    return texts, rewards, keys


def flat(groups):
    texts = [t for g in groups for t in g.texts]
    rewards = [r for g in groups for r in g.rewards]
    keys = [g.prompt_id for g in groups for _ in g.texts]
    return texts, rewards, keys


def fit(texts, rewards, keys, **kw):
    args = {"features": SMALL, "dim": 8, "epochs": 4, "lr": 0.05, "batch_size": 8, "seed": 0, "progress": False}
    args.update(kw)
    args.setdefault("stream", io.StringIO())
    return train_scorer(texts, rewards, keys, **args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    result = fit(*flat(synthetic(120)))
    path = tmp_path_factory.mktemp("scorer") / "scorer.pt"
    result.scorer.save(path)
    return result, path


# ---------------------------------------------------------------------- features
def _u64(x: int) -> int:
    return x & ((1 << 64) - 1)


def _mix(x: int) -> int:
    x = _u64(x ^ (x >> 30))
    x = _u64(x * 0xBF58476D1CE4E5B9)
    x = _u64(x ^ (x >> 27))
    x = _u64(x * 0x94D049BB133111EB)
    return x ^ (x >> 31)


def _word(w: str) -> int:
    b = w.encode()
    chunks = [int.from_bytes(b[i : i + 8].ljust(8, b"\0"), "little") for i in range(0, len(b), 8)]
    h = _mix(chunks[0])
    for c in chunks[1:]:
        h = _mix(h ^ c)
    return h


def _seed(s: int) -> int:
    return _mix(_u64(s * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019))


def test_feature_ids_follow_the_documented_hash_with_python_ints():
    # Checkpoints depend on these ids staying the same: recompute them from the definition.
    cfg = FeatureConfig(n_buckets=1000, ngram_max=2, hash_seed=3, group_features=False)
    feats = featurize(["Hello, wonderful world", "x"], (1, 2), cfg)
    h = {w: _word(w) + 1 for w in ("hello", ",", "wonderful", "world", "x")}
    bucket = lambda x: ((x >> 32) * 1000) >> 32  # noqa: E731
    uni = {w: bucket(_mix(h[w] ^ _seed(16 * 3 + 1))) for w in h}
    bi = [
        bucket(_mix(_u64(h[a] * 0x9E3779B97F4A7C15 + h[b]) ^ _seed(16 * 3 + 2)))
        for a, b in (("hello", ","), (",", "wonderful"), ("wonderful", "world"))
    ]
    assert feats.offsets.tolist() == [0, 8, 10] and feats.sizes.tolist() == [7, 1]
    # at each position its unigram, then the bigram starting there; 1000 (= n_buckets) pads
    assert feats.ids.tolist() == [uni["hello"], bi[0], uni[","], bi[1], uni["wonderful"], bi[2], uni["world"], 1000] + [
        uni["x"],
        1000,  # no bigram crosses into the next text
    ]
    assert feats.dense[0].tolist() == pytest.approx([np.log1p(4), np.log1p(22)])


def test_group_features_hand_computed():
    texts = ["so the answer is 12", "so the answer is 12", "i think it is 7", "no idea"]
    feats = featurize(texts, (1, 4), FeatureConfig(n_buckets=64))
    d = dict(zip(FeatureConfig().dense_names, feats.dense.T))
    lw = np.log1p([5, 5, 5, 2])
    np.testing.assert_allclose(d["log_words_z"], (lw - lw.mean()) / lw.std(), rtol=1e-6)
    assert d["duplicate_share"].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 0])
    assert d["answer_share"].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 0])
    assert d["has_answer"].tolist() == [1, 1, 1, 0]
    assert d["answer_top"].tolist() == [1, 1, 0, 0]  # 12 is the most common answer
    # word 3-gram Jaccard: texts 0 and 1 identical, no 3-gram shared with the others
    assert d["similarity_max"].tolist() == pytest.approx([1, 1, 0, 0])
    assert d["similarity_mean"].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 0])


def test_features_of_a_group_do_not_depend_on_the_rest_of_the_batch():
    texts, _, _ = flat(synthetic(6, seed=2))
    whole = featurize(texts, (6, 4), FeatureConfig())
    for i in range(6):
        part = featurize(texts[4 * i : 4 * i + 4], (1, 4), FeatureConfig())
        np.testing.assert_array_equal(part.dense, whole.dense[4 * i : 4 * i + 4])
        np.testing.assert_array_equal(part.ids, whole.take(np.arange(4 * i, 4 * i + 4)).ids)


def test_split_holds_out_whole_prompts():
    keys = [p for p in range(10) for _ in range(4)]
    train, val = split_by_prompt(keys, 0.3, seed=1)
    assert {keys[i] for i in train}.isdisjoint({keys[i] for i in val})
    assert len({keys[i] for i in val}) == 3 and train.size + val.size == 40
    with pytest.raises(GroupInputError, match="at least 2 prompts"):
        split_by_prompt([0, 0, 0], 0.2, 0)


def test_roc_auc_hand_computed():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)  # ties count one half
    assert np.isnan(roc_auc([1, 2], [1, 1]))


def test_within_group_auc_hand_computed():
    scores = [0.9, 0.1, 0.5, 5.0, 1.0, 1.0, 3.0, 4.0]
    targets = [1, 0, 0, 0, 1, 0, 1, 1]
    keys = ["a", "a", "a", "b", "b", "b", "c", "c"]
    # a: both pairs right = 1; b: (4>3) wrong, (4>5) tie = 0.25; c: uniform, left out -> mean 0.625
    assert within_group_auc(scores, targets, keys) == pytest.approx(0.625)
    assert np.isnan(within_group_auc([1, 2], [1, 1], ["a", "a"]))


# ---------------------------------------------------------------------- the report
def test_report_numbers_hand_computed():
    from gfpo_filters.filters.learned.report import format_report, validation_report

    keys = ["A"] * 3 + ["B"] * 3 + ["C"] * 2
    y = [1, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.3, 0.2, 0.3, 5.0, 6.0]
    lengths = [10, 5, 20, 30, 10, 10, 1, 1]
    consensus = [0.2, 0.2, 0.1, 0.5, 0.1, 0.9, 0.0, 0.0]
    r = validation_report(scores, y, keys, lengths, consensus)
    # A: scorer 1, shortest 0.5, consensus 0.75; B: 0.25, 1, 0.5; C has no pair
    assert r["within_auc"] == pytest.approx(
        {"scorer": 0.625, "shortest_first": 0.75, "consensus": 0.625, "random": 0.5}
    )
    assert r["mixed_groups"] == 2 and r["groups"] == 3 and r["completions"] == 8
    # pooled: 5 positives x 3 negatives; the scorer orders 11.5 of the 15 pairs right
    assert r["pooled_auc"]["scorer"] == pytest.approx(11.5 / 15)
    assert r["best_simple"] == "shortest_first" and r["margin"] == pytest.approx(-0.125)
    assert not r["beats_best_simple"]
    assert "warning: the trained scorer does not beat the best simple ranking (shortest-first" in format_report(r)


# ---------------------------------------------------------------------- training
def test_ranker_learns_a_marker_rule_within_groups_despite_length_and_difficulty():
    texts, rewards, keys = confounded(300)
    res = fit(texts, rewards, keys, epochs=5)
    assert res.metric == "within" and res.scorer.objective == "listwise"  # the default
    assert res.report["within_auc"]["scorer"] > 0.95
    assert res.report["within_auc"]["shortest_first"] < 0.7  # length cannot do it
    assert res.report["beats_best_simple"]
    # and it ranks the groups of fresh prompts it never saw
    fresh, y, fk = confounded(40, seed=99)
    pred = res.scorer.predict(fresh, (40, 4))
    assert within_group_auc(pred, y, fk) > 0.95


@pytest.mark.parametrize("objective", ["pairwise", "relative"])
def test_other_within_group_objectives_learn_the_rule(objective):
    texts, rewards, keys = confounded(300)
    res = fit(texts, rewards, keys, epochs=5, objective=objective)
    assert res.scorer.objective == objective and res.report["within_auc"]["scorer"] > 0.9


def test_uniform_groups_are_left_out_of_ranking_objectives():
    texts, rewards, keys = confounded(60)
    # add 200 uniform groups (all right): they carry no ranking signal
    more = [(" ".join(["zq"] + FILLER[: 5 + i % 7]), 1.0, f"u{i // 4}") for i in range(800)]
    out = io.StringIO()
    res = fit(texts + [m[0] for m in more], rewards + [m[1] for m in more], keys + [m[2] for m in more], stream=out)
    used = int(out.getvalue().split("(")[1].split(" groups used")[0])
    assert used <= 60  # only mixed training groups are trained on
    assert res.train_index.size > 600  # yet every training completion counts in its group's features


def test_training_prints_the_metric_every_epoch_and_tqdm_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    texts, rewards, keys = flat(synthetic(40))
    out = Tty()
    fit(texts, rewards, keys, epochs=3, progress=True, stream=out)
    log = out.getvalue()
    # epoch 0 (dense features only), three epochs and the best-epoch line
    assert len(re.findall(r"val within-group AUC \d", log)) == 5
    assert "epoch 0/3 (dense features only)" in log
    assert "\repoch 3/3:" in log and "0/4 [" in log  # tqdm's bar, redrawn in place, cleared at the end
    assert "validation report on held-out prompts" in log
    quiet = io.StringIO()
    fit(texts, rewards, keys, epochs=1, progress=True, stream=quiet)  # not a terminal: no bar
    assert "\r" not in quiet.getvalue() and "it/s" not in quiet.getvalue()


def test_pointwise_continuous_rewards_use_squared_loss_and_spearman():
    groups = synthetic(120, seed=3)
    texts, rewards, keys = flat(groups)
    rewards = [2.0 + 3.0 * r + 0.01 * len(t) for r, t in zip(rewards, texts)]
    res = fit(texts, rewards, keys, dim=4, batch_size=4, objective="pointwise")
    assert res.metric == "spearman" and res.scorer.loss == "mse" and res.scorer.predicts_reward
    assert res.scorer.training["val_metric"] == max(h["val_spearman"] for h in res.history) > 0.8
    fresh_groups = synthetic(30, seed=100)
    fresh, marker, _ = flat(fresh_groups)
    truth = np.array([2.0 + 3.0 * r + 0.01 * len(t) for r, t in zip(marker, fresh)])
    pred = res.scorer.predict(fresh, (30, 4))  # on the reward's own scale, not standardised
    assert abs(pred.mean() - truth.mean()) < 0.5
    assert pred[np.array(marker) == 1].mean() - pred[np.array(marker) == 0].mean() > 1.0  # true gap: 3


def test_dense_only_model_is_kept_when_ngrams_cannot_beat_it():
    rng = np.random.default_rng(4)
    texts, rewards, keys = [], [], []
    for p in range(60):
        for _ in range(4):
            n = int(rng.integers(5, 40))
            texts.append(" ".join(rng.choice(FILLER, n)))
            rewards.append(float(n < 20))  # only the length matters: the length features are perfect
            keys.append(p)
    out = io.StringIO()
    res = fit(texts, rewards, keys, dim=4, epochs=2, stream=out)
    assert res.history[0]["val_within"] == 1.0
    assert res.scorer.training["best_epoch"] == 0
    assert "dense features only: the n-gram features did not help" in out.getvalue()
    assert float(res.scorer.model.head[-1].weight.detach().abs().sum()) == 0.0  # the n-gram head is the untrained zero


def test_bad_training_settings():
    texts, rewards, keys = flat(synthetic(10))
    with pytest.raises(ValueError, match="relative=True predicts reward differences"):
        fit(texts, rewards, keys, relative=True, loss="bce")
    assert fit(texts, rewards, keys, relative=True, loss="mse", epochs=1).scorer.objective == "relative"
    with pytest.raises(ValueError, match="objective must be one of"):
        fit(texts, rewards, keys, objective="ranknet")
    with pytest.raises(ValueError, match="loss='bce' applies to objective='pointwise' only"):
        fit(texts, rewards, keys, loss="bce")
    same = [1.0] * len(texts)
    with pytest.raises(GroupInputError, match="no training prompt has completions with different rewards"):
        fit(texts, same, keys)


def test_nan_targets_are_left_out_of_training():
    texts, rewards, keys = flat(synthetic(20))
    rewards[0] = float("nan")
    res = fit(texts, rewards, keys, dim=4, epochs=1)
    assert res.train_index.size + res.val_index.size == len(texts) - 1
    assert 0 not in res.train_index and 0 not in res.val_index


def test_cli_trains_and_the_filter_loads_the_checkpoint(tmp_path, capsys):
    data = tmp_path / "rollouts.jsonl"
    write_rollouts(data, synthetic(80))
    out = tmp_path / "scorer.pt"
    args = ["train-scorer", str(data), "--out", str(out), "--epochs", "3", "--buckets", "4096", "--dim", "8"]
    rc = cli_main([*args, "--lr", "0.05", "--batch-size", "8", "--no-progress", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err.count("val within-group AUC") == 5 and "held-out prompts" in captured.err
    report = json.loads(captured.out)
    assert report["within_auc"]["random"] == 0.5 and report["mixed_groups"] > 0
    f = load_filter("learned", checkpoint=str(out), device="cpu")
    scores = f([["the a banana of", "the a of to", "banana"]], [[1.0, 0.0, 1.0]])[0]
    assert scores[0] > scores[1] and scores[2] > scores[1]
    assert f._scorer.training["rollouts"] == [str(data)]
    assert f._scorer.training["report"] == report  # the report travels with the checkpoint


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completions": [{"text": "a", "reward": 1}]}\nnot json\n')
    assert cli_main(["train-scorer", str(bad), "--out", str(tmp_path / "s.pt")]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()
    good = tmp_path / "good.jsonl"
    write_rollouts(good, synthetic(10))
    out = tmp_path / "no" / "such" / "dir" / "s.pt"
    assert cli_main(["train-scorer", str(good), "--out", str(out), "--epochs", "1", "--no-progress"]) == 2
    assert f"cannot write '{out}'" in capsys.readouterr().err


# ---------------------------------------------------------------------- checkpoints
def test_save_load_round_trip_gives_identical_scores(trained):
    result, path = trained
    texts, _, _ = flat(synthetic(8, seed=5))
    groups = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    rewards = np.ones((len(groups), 4))
    f = load_filter("learned", checkpoint=path, device="cpu")
    first = f(groups, rewards)
    assert f(groups, rewards) == first  # identical on every call
    assert np.array_equal(np.array(first).ravel(), result.scorer.predict(texts, (8, 4)))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION == 2 and ckpt["features"]["n_buckets"] == 4096


def test_a_batch_scores_the_same_whole_or_in_pieces(trained):
    _, path = trained
    texts, _, _ = flat(synthetic(12, seed=6))
    groups = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    f = load_filter("learned", checkpoint=path, device="cpu")
    whole = f(groups, np.ones((12, 4)))
    pieces = [row for i in range(0, 12, 5) for row in f(groups[i : i + 5], np.ones((len(groups[i : i + 5]), 4)))]
    assert pieces == whole  # bit for bit: a group's score depends on that group alone
    one_group_chunks = load_filter("learned", checkpoint=path, device="cpu", batch_size=4)(groups, np.ones((12, 4)))
    assert one_group_chunks == whole


def test_format_1_checkpoint_says_how_to_retrain(trained, tmp_path):
    _, path = trained
    old = tmp_path / "old.pt"
    torch.save(
        {"format": "gfpo-filters-scorer", "format_version": 1, "gfpo_filters_version": "0.1.0", "features": {}},
        old,
    )
    with pytest.raises(
        ScorerCheckpointError,
        match=r"'.*old\.pt' has format version 1, but this gfpo-filters reads version 2 \(written by gfpo-filters "
        r"0\.1\.0\) \(version 1 scorers used other word hashes.*retrain it with 'gfpo-filters train-scorer "
        r"ROLLOUTS\.jsonl --out scorer\.pt'",
    ):
        load_filter("learned", checkpoint=old)


def test_reward_per_token_needs_a_scorer_that_predicts_a_reward(trained):
    _, path = trained
    with pytest.raises(FilterParameterError, match=r"'rank_by'.*objective 'listwise'.*--objective pointwise"):
        load_filter("learned", checkpoint=path, rank_by="reward_per_token")


def _rewrite(path, tmp_path, name, change):
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    out = tmp_path / name
    torch.save(ckpt, out)
    return out


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ScorerCheckpointError, match=r"scorer checkpoint '.*nope\.pt' does not exist"):
        load_filter("learned", checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ScorerCheckpointError, match="is not a file"):
        load_filter("learned", checkpoint=tmp_path)


def test_corrupt_and_truncated_checkpoints(trained, tmp_path):
    _, path = trained
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for bad in (junk, cut):
        with pytest.raises(ScorerCheckpointError, match=rf"'{bad}' could not be read: it is corrupt"):
            load_filter("learned", checkpoint=bad)


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "gfpo-filters-scorer", "obj": io.StringIO}, evil)  # a class: not allowed by weights_only
    with pytest.raises(ScorerCheckpointError, match="could not be read"):
        load_filter("learned", checkpoint=evil)


def test_wrong_format_version_wrong_kind_and_incompatible(trained, tmp_path):
    _, path = trained
    v99 = _rewrite(path, tmp_path, "v99.pt", lambda c: c.update(format_version=99))
    with pytest.raises(ScorerCheckpointError, match=rf"'{v99}' has format version 99.*reads version {FORMAT_VERSION}"):
        load_filter("learned", checkpoint=v99)
    plain = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    with pytest.raises(ScorerCheckpointError, match=rf"'{plain}' is not a gfpo-filters scorer checkpoint"):
        load_filter("learned", checkpoint=plain)
    no_target = _rewrite(path, tmp_path, "no_target.pt", lambda c: c.pop("target"))
    with pytest.raises(ScorerCheckpointError, match=r"is incompatible: it has no 'target' entry"):
        load_filter("learned", checkpoint=no_target)
    shape = _rewrite(path, tmp_path, "shape.pt", lambda c: c["features"].update(n_buckets=999))
    with pytest.raises(ScorerCheckpointError, match=r"'.*shape\.pt' is incompatible.*size mismatch"):
        load_filter("learned", checkpoint=shape)
    bad_feat = _rewrite(path, tmp_path, "feat.pt", lambda c: c["features"].update(ngram_max=0))
    with pytest.raises(ScorerCheckpointError, match=r"feat\.pt.*ngram_max"):
        load_filter("learned", checkpoint=bad_feat)


# ---------------------------------------------------------------------- wrapped torch modules
class MarkerModule(torch.nn.Module):
    """Scores 1 + (number of 'banana' in the text) + 0.001 * length; records the batches it sees."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.dropout = torch.nn.Dropout(0.9)
        self.seen: list[CompletionBatch] = []

    def forward(self, batch):
        self.seen.append(batch)
        counts = torch.tensor([t.count("banana") for t in batch.texts], dtype=torch.float32, device=batch.device)
        return self.dropout(self.scale * (1 + counts + 0.001 * batch.lengths.float()))[:, None]


def test_wrapped_module_gets_the_documented_batch_in_chunks():
    m = MarkerModule()
    m.train()
    f = load_filter("learned", model=m, batch_size=3)
    groups = [["a banana", "b", "c banana banana"], ["d", "e banana", "f"]]
    ids = [[[1, 2], [3], [4, 5, 6]], [[7], [8, 9], [10]]]
    scores = np.array(f(groups, [[0, 0, 0], [0, 0, 0]], completion_ids=ids, prompts=["p0", "p1"]))
    expected = np.array([[2.002, 1.001, 3.003], [1.001, 2.002, 1.001]])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)  # eval mode: dropout off
    assert m.training  # the caller's mode is restored
    assert [len(b) for b in m.seen] == [3, 3]
    b = m.seen[1]
    assert b.texts == ["d", "e banana", "f"] and b.prompts == ["p1"] * 3
    assert b.completion_ids == [[7], [8, 9], [10]]
    assert b.group_index.tolist() == [1, 1, 1] and b.index.tolist() == [0, 1, 2]
    assert b.lengths.dtype == torch.int64 and b.lengths.tolist() == [1, 2, 1]  # token counts from the ids


def test_wrapped_module_scores_are_identical_on_every_call():
    f = load_filter("learned", model=MarkerModule())
    groups = [["x banana", "y", "z"]]
    assert f(groups, [[1, 1, 1]]) == f(groups, [[1, 1, 1]])


def test_wrapped_module_wrong_output_shape_is_a_clear_error():
    class Bad(torch.nn.Module):
        def forward(self, batch):
            return torch.zeros(len(batch) + 1)

    with pytest.raises(FilterOutputError, match=r"'learned'.*shape \(4,\).*chunk of 3.*group 0, completion 0"):
        load_filter("learned", model=Bad())([["a", "b", "c"]], [[1, 1, 1]])


def test_wrapped_module_nan_score_on_a_scorable_completion_is_reported():
    class Nan(torch.nn.Module):
        def forward(self, batch):
            return torch.tensor([float("nan"), 1.0])

    with pytest.raises(FilterOutputError, match=r"'learned'.*non-finite.*group 0, completion 0"):
        load_filter("learned", model=Nan())([["a", "b"]], [[1, 1]])


def test_nan_rewards_never_ranked_above_scorable_ones(trained):
    _, path = trained
    f = load_filter("learned", checkpoint=path, device="cpu")
    groups = [["banana banana the", "the a of", "banana the", "of to"]]
    scores = np.array(f(groups, [[None, 0.0, float("nan"), 1.0]])[0])
    assert scores[[1, 3]].min() > scores[[0, 2]].max()


def test_message_list_completions_score_like_their_text(trained):
    _, path = trained
    f = load_filter("learned", checkpoint=path, device="cpu")
    texts = ["banana of the", "to and in"]
    messages = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]
    assert f([messages], [[1, 1]]) == f([texts], [[1, 1]])
    m = load_filter("learned", model=MarkerModule())
    assert m([messages], [[1, 1]]) == m([texts], [[1, 1]])


def test_reward_per_token():
    class Const(torch.nn.Module):
        def forward(self, batch):
            return torch.tensor([2.0, 2.0, -1.0, -3.0, 0.0])

    f = load_filter("learned", model=Const(), rank_by="reward_per_token")
    scores = np.array(f([["a"] * 5], [[1] * 5], completion_lengths=[[4, 8, 2, 2, 0]])[0])
    assert scores[:2].tolist() == [0.5, 0.25]
    # non-positive predictions: -1 + (2 / pi) * atan(pred), below every positive one, higher first
    assert scores[2:].tolist() == pytest.approx([-1.5, -1.0 - 2.0 / np.pi * np.arctan(3.0), -1.0])


# ---------------------------------------------------------------------- Hugging Face model directory
def _tiny_hf_model(tmp_path, num_labels=1):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in FILLER + ["banana", "apple"]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
    )
    model = BertForSequenceClassification(config).eval()
    directory = tmp_path / f"rm{num_labels}"
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory, model, fast


def test_local_hf_sequence_classification_model(tmp_path):
    directory, model, tok = _tiny_hf_model(tmp_path)
    texts = [["the banana", "a of to and in is it that", "apple"], ["banana banana banana", "of", "the a"]]
    f = load_filter("learned", model=str(directory), device="cpu", batch_size=2)
    scores = np.array(f(texts, np.ones((2, 3))))
    with torch.inference_mode():  # one unpadded forward per completion, by hand
        expected = [[float(model(**tok(t, return_tensors="pt")).logits[0, 0]) for t in grp] for grp in texts]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert f(texts, np.ones((2, 3))) == f(texts, np.ones((2, 3)))


def test_hf_model_with_several_labels_needs_label(tmp_path):
    directory, model, tok = _tiny_hf_model(tmp_path, num_labels=2)
    with pytest.raises(FilterOutputError, match=r"2 outputs per completion.*label="):
        load_filter("learned", model=directory, device="cpu")([["the", "a"]], [[1, 1]])
    scores = load_filter("learned", model=directory, device="cpu", label=1)([["the", "a banana"]], [[1, 1]])[0]
    with torch.inference_mode():
        expected = [
            float(torch.log_softmax(model(**tok(t, return_tensors="pt")).logits, 1)[0, 1]) for t in ("the", "a banana")
        ]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_hf_model_with_prompt_pairs(tmp_path):
    directory, model, tok = _tiny_hf_model(tmp_path)
    f = load_filter("learned", model=directory, device="cpu", include_prompt=True)
    scores = f([["banana", "apple the"]], [[1, 1]], prompts=["the a"])[0]
    with torch.inference_mode():
        expected = [float(model(**tok("the a", t, return_tensors="pt")).logits[0, 0]) for t in ("banana", "apple the")]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    with pytest.raises(GroupInputError, match="include_prompt=True needs the trainer to pass prompts"):
        f([["banana", "apple"]], [[1, 1]])


def test_bad_model_directories(tmp_path):
    with pytest.raises(FilterParameterError, match=r"'learned'.*'model'.*does not exist"):
        load_filter("learned", model=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FilterParameterError, match=r"'learned'.*'model'.*has no config.json"):
        load_filter("learned", model=tmp_path / "empty")


# ---------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "params, match",
    [
        ({}, r"'learned'.*'checkpoint'.*exactly one"),
        ({"checkpoint": "a.pt", "model": "b"}, r"'learned'.*'model'.*exactly one"),
        ({"model": 42}, r"'learned'.*'model'.*torch.nn.Module"),
        ({"model": "x", "rank_by": "length"}, r"'learned'.*'rank_by'"),
        ({"model": "x", "batch_size": 0}, r"'learned'.*'batch_size'"),
        ({"model": "x", "label": -1}, r"'learned'.*'label'"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(FilterParameterError, match=match):
        load_filter("learned", **params)


def test_module_with_device_or_include_prompt_is_refused():
    with pytest.raises(FilterParameterError, match=r"'device'.*stays on its own device"):
        load_filter("learned", model=MarkerModule(), device="cpu")
    with pytest.raises(FilterParameterError, match=r"'include_prompt'.*tokenizer"):
        load_filter("learned", model=MarkerModule(), include_prompt=True)


def test_importing_the_filter_and_scorer_modules_does_not_import_torch():
    code = (
        "import sys, gfpo_filters, gfpo_filters.filters.learned, gfpo_filters.filters.learned.model,"
        " gfpo_filters.filters.learned.training, gfpo_filters.cli;"
        "gfpo_filters.list_filters(); gfpo_filters.cli.build_parser();"
        "print(sorted(m for m in ('torch', 'transformers', 'scipy.stats') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_filter_import_path_leaves_out_argparse_and_the_training_loop(trained):
    _, path = trained
    heavy = "('argparse', 'tqdm', 'gfpo_filters.filters.learned.training', 'gfpo_filters.filters.learned.cli')"
    code = (
        "import sys, gfpo_filters.filters.learned;"
        f"print(sorted(m for m in {heavy} if m in sys.modules));"
        "from gfpo_filters import load_filter;"
        f"f = load_filter('learned', checkpoint={str(path)!r}, device='cpu'); f([['a b', 'c']], [[1, 0]]);"
        f"print(sorted(m for m in {heavy} if m.startswith('gfpo') and m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "[]"]  # (torch itself imports argparse once a checkpoint loads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_match_cpu(trained):
    _, path = trained
    groups = [["banana the", "of to", "a banana a"]]
    cpu = load_filter("learned", checkpoint=path, device="cpu")(groups, [[1, 1, 1]])
    f = load_filter("learned", checkpoint=path)  # default: CUDA when available
    assert f._scorer.device.type == "cuda"
    np.testing.assert_allclose(f(groups, [[1, 1, 1]]), cpu, rtol=1e-5)
    assert f(groups, [[1, 1, 1]]) == f(groups, [[1, 1, 1]])


def test_the_state_identifies_the_checkpoint_so_a_resume_with_another_one_is_refused(trained, tmp_path):
    from gfpo_filters import FilterStateError
    from gfpo_filters.step import filter_state, load_filter_state

    _, path = trained
    saved = json.loads(json.dumps(filter_state(load_filter("learned", checkpoint=path, device="cpu"))))
    assert saved["filter_state"]["model"] == f"checkpoint {path}"
    copy = tmp_path / "same.pt"
    copy.write_bytes(path.read_bytes())
    load_filter_state(load_filter("learned", checkpoint=copy, device="cpu"), None, saved)  # same weights, other path
    other = tmp_path / "other.pt"
    fit(*flat(synthetic(40, seed=1))).scorer.save(other)
    with pytest.raises(FilterStateError, match=r"saved with model 'checkpoint .*scorer.pt' .* this run scores with"):
        load_filter_state(load_filter("learned", checkpoint=other, device="cpu"), None, saved)
