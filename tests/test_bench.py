"""``gfpo-filters bench``: hand-computed metrics on a tiny rollout file, options, errors, output formats."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from gfpo_filters import GroupFilter, hookimpl, registry
from gfpo_filters.bench import BenchUsageError, parse_filter_specs, parse_ks, synthetic_rollouts
from gfpo_filters.cli import main

EPS = 1e-4
A = 0.5 / (0.5 + EPS)  # GFPO/GRPO advantage magnitude for two-valued rewards {0, 1} in equal numbers


def _write(path, groups):
    with path.open("w") as f:
        for g in groups:
            f.write(json.dumps(g) + "\n")
    return str(path)


def _group(lengths, rewards, correct=None, prompt="p"):
    comps = []
    for j, (n, r) in enumerate(zip(lengths, rewards)):
        c = {"text": "x" * n, "reward": r}
        if correct is not None:
            c["correct"] = correct[j]
        comps.append(c)
    return {"prompt": prompt, "completions": comps}


@pytest.fixture
def tiny(tmp_path):
    """Two groups of 4 with known lengths, rewards and correctness (see test_length_filter_metrics)."""
    return _write(
        tmp_path / "tiny.jsonl",
        [
            _group([1, 2, 3, 4], [1.0, 0.0, 1.0, 0.0], [True, False, True, False]),
            _group([10, 20, 30, 40], [0.0, 0.0, 1.0, 1.0], [False, False, True, True]),
        ],
    )


def bench_json(capsys, *args):
    rc = main(["bench", "--repeat", "1", "--json", "--no-progress", *args])
    out, err = capsys.readouterr()
    return rc, json.loads(out) if out.strip() else None, err


def test_length_filter_metrics(tiny, capsys):
    rc, recs, _ = bench_json(capsys, "--data", tiny, "-f", "length", "-k", "2")
    assert rc == 0 and len(recs) == 1
    r = recs[0]
    # Kept (shortest 2): group A lengths 1, 2 (rewards 1, 0); group B lengths 10, 20 (rewards 0, 0).
    assert (r["filter"], r["k"], r["n_groups"], r["n_completions"]) == ("length", 2, 2, 8)
    assert r["length_unit"] == "characters"
    assert r["kept_length_mean"] == pytest.approx(33 / 4)
    assert r["group_length_mean"] == pytest.approx(110 / 8)
    assert r["kept_length_ratio"] == pytest.approx((33 / 4) / (110 / 8))  # 0.6
    assert r["kept_reward_mean"] == pytest.approx(0.25)
    assert r["group_reward_mean"] == pytest.approx(0.5)
    assert r["kept_accuracy"] == pytest.approx(0.25)
    assert r["group_accuracy"] == pytest.approx(0.5)
    assert r["signal_fraction"] == pytest.approx(0.5)  # A keeps {1, 0}; B keeps {0, 0}
    assert r["group_signal_fraction"] == pytest.approx(1.0)
    # GFPO: A's kept rows get +A (length 1) and -A (length 2); B's kept rows 0. Mean over 4 kept rows.
    assert r["length_pressure_gfpo"] == pytest.approx((A * 1 - A * 2) / 4)
    # GRPO: A: +1 -2 +3 -4 = -2; B: -10 -20 +30 +40 = 40; times A, mean over 8 rows.
    assert r["length_pressure_grpo"] == pytest.approx(A * 38 / 8)
    # Per prompt: sums over a group's rows, averaged over the 2 groups.
    assert r["length_push_gfpo"] == pytest.approx((A * 1 - A * 2) / 2)
    assert r["length_push_grpo"] == pytest.approx(A * 38 / 2)
    assert r["completions_per_s"] == pytest.approx(8 / r["time_s"])
    assert r["us_per_group"] == pytest.approx(r["time_s"] / 2 * 1e6)
    assert r["error"] is None and r["excluded"] == {"all_rewards_missing": [], "group_smaller_than_k": []}


def test_reward_filter_keeps_signal_only_where_the_kept_set_is_mixed(tiny, capsys):
    rc, recs, _ = bench_json(capsys, "--data", tiny, "-f", "reward", "-k", "2,3")
    by_k = {r["k"]: r for r in recs}
    # k=2: A keeps the two 1.0 rewards (lengths 1, 3); B the two 1.0 (30, 40): no variance left anywhere.
    assert by_k[2]["kept_reward_mean"] == 1.0 and by_k[2]["signal_fraction"] == 0.0
    assert by_k[2]["length_pressure_gfpo"] == pytest.approx(0.0)
    assert by_k[2]["kept_length_mean"] == pytest.approx((1 + 3 + 30 + 40) / 4)
    # k=3: A keeps rewards 1, 1, 0 -> completions 0, 2, 1 (ties by position); B keeps 30, 40 and 10.
    assert by_k[3]["signal_fraction"] == 1.0
    assert by_k[3]["kept_length_mean"] == pytest.approx((1 + 3 + 2 + 30 + 40 + 10) / 6)


def test_exclusions_are_counted_and_named(tmp_path, capsys):
    path = _write(
        tmp_path / "mixed.jsonl",
        [
            _group([1, 2, 3, 4], [1.0, 0.0, 1.0, 0.0]),
            _group([5, 6, 7, 8], [None, None, None, None]),
            _group([9, 9], [1.0, 0.0]),
            _group([1, 2, 3], [1.0, None, 0.0]),
        ],
    )
    rc, recs, err = bench_json(capsys, "--data", path, "-f", "length", "-k", "3")
    r = recs[0]
    assert rc == 0
    assert r["excluded"] == {"all_rewards_missing": [f"{path}:2"], "group_smaller_than_k": [f"{path}:3"]}
    assert r["n_groups"] == 2 and r["group_sizes"] == [3, 4]
    assert "1 group(s) have no reward at all and were excluded" in err
    assert "1 group(s) have fewer than k=3 completions and were excluded" in err and f"{path}:3" in err
    # G=4 group keeps lengths 1, 2, 3; G=3 group keeps all (1, 2, 3) but the missing reward is left out of means.
    assert r["kept_length_mean"] == pytest.approx(12 / 6)
    assert r["kept_reward_mean"] == pytest.approx((1 + 0 + 1 + 1 + 0) / 5)
    assert r["group_reward_mean"] == pytest.approx((2 + 1) / 6)
    assert r["kept_accuracy"] is None and r["group_accuracy"] is None  # no 'correct' field


def test_k_larger_than_every_group_is_reported_not_crashed(tiny, capsys):
    rc, recs, err = bench_json(capsys, "--data", tiny, "-f", "length", "-k", "5")
    assert rc == 1
    assert recs[0]["n_groups"] == 0 and recs[0]["kept_length_ratio"] is None
    assert "no group left to measure" in recs[0]["error"] and "fewer than k=5" in err


def test_words_unit_and_tokenizer_file(tmp_path, capsys):
    path = _write(
        tmp_path / "w.jsonl",
        [
            {
                "prompt": None,
                "completions": [
                    {"text": "a b c", "reward": 1.0},
                    {"text": "abcdefghij", "reward": 0.0},
                ],
            }
        ],
    )
    rc, recs, _ = bench_json(capsys, "--data", path, "-f", "length", "-k", "1", "--length-unit", "words")
    # By words the single-word completion is the shorter one: kept length 1, mean 2.
    assert recs[0]["length_unit"] == "words" and recs[0]["kept_length_mean"] == 1 and recs[0]["group_length_mean"] == 2
    rc, recs, _ = bench_json(capsys, "--data", path, "-f", "length", "-k", "1")
    assert recs[0]["kept_length_mean"] == 5  # by characters "a b c" (5) beats "abcdefghij" (10)

    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = tokenizers.Tokenizer(WordLevel({"a": 0, "b": 1, "c": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    rc, recs, _ = bench_json(
        capsys, "--data", path, "-f", "length", "-k", "1", "--tokenizer", str(tmp_path / "tokenizer.json")
    )
    assert recs[0]["length_unit"].startswith("tokens") and recs[0]["group_length_mean"] == 2


def test_filter_labels_and_parameters(tiny, capsys):
    rc, recs, _ = bench_json(
        capsys,
        "--data",
        tiny,
        "-f",
        "a=random,b=random",
        "-k",
        "2",
        "--param",
        "a.seed=1",
        "--params",
        '{"b": {"seed": 2}}',
    )
    assert [(r["filter"], r["name"], r["params"]) for r in recs] == [
        ("a", "random", {"seed": 1}),
        ("b", "random", {"seed": 2}),
    ]
    rc, recs, _ = bench_json(
        capsys, "--data", tiny, "-f", "w=weighted", "-k", "2", "--param", 'w.filters=["length", "reward"]'
    )
    assert rc == 0 and recs[0]["params"] == {"filters": ["length", "reward"]}


def test_parse_helpers():
    assert parse_ks(["2,4", "3", "2"]) == [2, 3, 4]
    with pytest.raises(BenchUsageError, match="at least 1"):
        parse_ks(["0"])
    with pytest.raises(BenchUsageError, match="positive integers"):
        parse_ks(["two"])
    specs = parse_filter_specs(["length, x=reward"], ["x.threshold=0.5", "length.tokenizer=abc"], [])
    assert [(s.label, s.name, s.params) for s in specs] == [
        ("length", "length", {"tokenizer": "abc"}),
        ("x", "reward", {"threshold": 0.5}),
    ]
    with pytest.raises(BenchUsageError, match="no filter labelled 'lenght'"):
        parse_filter_specs(["length"], ["lenght.tokenizer=1"], [])
    with pytest.raises(BenchUsageError, match="expected LABEL.KEY=VALUE"):
        parse_filter_specs(["length"], ["tokenizer=1"], [])
    with pytest.raises(BenchUsageError, match="given twice"):
        parse_filter_specs(["length,length"], [], [])
    with pytest.raises(BenchUsageError, match="not valid JSON"):
        parse_filter_specs(["length"], [], ["{bad"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["-f", "lenght"], "unknown filter 'lenght'. Did you mean 'length'"),
        (["-f", "length", "--param", "length.foo=1"], "filter 'length' has no parameter 'foo'"),
        (["-f", "weighted"], "filter 'weighted' needs parameter(s): filters"),
        (["--data", "/nonexistent/r.jsonl"], "rollout file '/nonexistent/r.jsonl' does not exist"),
        (["-k", "0"], "-k must be at least 1"),
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["--groups", "0"], "--groups out of range"),
        (["--json", "--markdown"], "choose one of --json and --markdown"),
    ],
)
def test_usage_errors_are_one_line_not_tracebacks(args, message, capsys):
    rc = main(["bench", "--no-progress", *args])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("gfpo-filters bench: error: ") and message in last and "Traceback" not in err


def test_synthetic_options_conflict_with_data(tiny, capsys):
    assert main(["bench", "--data", tiny, "--group-size", "8"]) == 2
    assert "--group-size: synthetic-data options have no effect with --data" in capsys.readouterr().err


def test_bad_rollout_line_is_named(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"completions": [{"text": "a", "reward": 1}]}\nnot json\n')
    assert main(["bench", "--data", str(path)]) == 2
    assert f"{path}:2: not valid JSON" in capsys.readouterr().err


def test_synthetic_default_runs_every_parameterless_filter(capsys):
    rc, recs, err = bench_json(capsys, "--groups", "6", "--group-size", "4")
    benched = {r["filter"] for r in recs}
    assert rc == 0
    assert {"length", "token_efficiency", "reward", "random", "max_variance"} <= benched
    assert not benched & {"weighted", "chain"}  # they need parameters
    assert "note: not benchmarked by default because they need parameters: " in err and "chain" in err
    assert all(r["k"] == 1 and r["n_groups"] == 6 and r["completions_per_s"] > 0 for r in recs)  # default k = G // 4


def test_synthetic_generator_follows_its_reward_model():
    groups = synthetic_rollouts(
        n_groups=400, group_size=8, mean_length=300, length_effect=-1.5, missing_rate=0.1, seed=1
    )
    L = np.array([[len(t) for t in g.texts] for g in groups], dtype=float)
    C = np.array([g.correct for g in groups])
    R = np.array([g.rewards for g in groups])
    assert L.shape == (400, 8) and abs(L.mean() - 300) < 15
    assert L[C == 1].mean() < L[C == 0].mean()  # longer completions are less often correct
    assert 0.07 < np.isnan(R).mean() < 0.13
    np.testing.assert_array_equal(R[np.isfinite(R)], C[np.isfinite(R)])  # binary reward = correctness
    again = synthetic_rollouts(
        n_groups=400, group_size=8, mean_length=300, length_effect=-1.5, missing_rate=0.1, seed=1
    )
    assert [g.texts for g in again] == [g.texts for g in groups]


class _Spy(GroupFilter):
    name = "spy"
    description = "records its calls"
    calls: list = []

    def __call__(self, **kwargs):
        type(self).calls.append(kwargs)
        return super().__call__(**kwargs)

    def score(self, groups):
        return -groups.lengths.astype(float)


class _Explodes(GroupFilter):
    name = "explodes"
    description = "always fails"

    def score(self, groups):
        raise RuntimeError("boom")


class _FirstFirst(GroupFilter):
    """Raw scores G-1, ..., 1, 0 whatever the rewards: it does not put missing rewards last itself."""

    name = "first_first"
    description = "prefers earlier completions"

    def __call__(self, group_completions, group_rewards, **kwargs):
        return [[float(len(c) - j) for j in range(len(c))] for c in group_completions]

    def score(self, groups):
        raise AssertionError("not called")


@pytest.fixture
def extra_filters(monkeypatch):
    module = types.ModuleType("bench_test_plugin")
    module.register_filters = hookimpl(lambda: [_Spy, _Explodes, _FirstFirst])
    monkeypatch.setitem(sys.modules, "bench_test_plugin", module)
    monkeypatch.setattr(registry, "BUILTIN_PLUGINS", registry.BUILTIN_PLUGINS + ("bench_test_plugin",))
    registry.reset_registry()
    _Spy.calls = []


def test_timing_goes_through_the_trainer_call(extra_filters, tmp_path, capsys):
    path = _write(tmp_path / "r.jsonl", [_group([1, 2, 3], [1.0, 0.0, 1.0], prompt=f"q{i}") for i in range(5)])
    rc = main(
        [
            "bench",
            "--data",
            path,
            "-f",
            "spy",
            "-k",
            "2",
            "--repeat",
            "3",
            "--batch-groups",
            "2",
            "--json",
            "--no-progress",
        ]
    )
    assert rc == 0
    calls = _Spy.calls
    assert len(calls) == 3 * 3  # 3 passes x ceil(5 / 2) calls
    assert [len(c["group_completions"]) for c in calls[:3]] == [2, 2, 1]
    assert set(calls[0]) == {"group_completions", "group_rewards", "num_remains_in_group", "prompts"}
    assert calls[0]["num_remains_in_group"] == 2 and calls[0]["prompts"] == ["q0", "q1"]
    assert calls[0]["group_rewards"] == [[1.0, 0.0, 1.0]] * 2
    capsys.readouterr()


def test_a_failing_filter_is_reported_and_the_others_still_run(extra_filters, tiny, capsys):
    rc, recs, err = bench_json(capsys, "--data", tiny, "-f", "explodes,length", "-k", "2")
    assert rc == 1
    assert recs[0]["error"] == "RuntimeError: boom" and recs[0]["kept_length_ratio"] is None
    assert recs[1]["error"] is None and recs[1]["kept_length_ratio"] == pytest.approx(0.6)
    assert "filter 'explodes', k=2: RuntimeError: boom" in err


def test_missing_rewards_are_kept_last_as_the_trainer_keeps_them(extra_filters, tmp_path, capsys):
    path = _write(tmp_path / "m.jsonl", [_group([1, 2, 3, 4], [None, 1.0, 0.0, 1.0])])
    rc, recs, _ = bench_json(capsys, "--data", path, "-f", "first_first", "-k", "2")
    r = recs[0]
    # The filter ranks completion 0 first, but its reward is missing: the kept set is completions 1 and 2.
    assert rc == 0 and r["kept_length_mean"] == pytest.approx((2 + 3) / 2)
    assert r["kept_reward_mean"] == pytest.approx(0.5) and r["signal_fraction"] == 1.0
    assert r["length_pressure_gfpo"] == pytest.approx((A * 2 - A * 3) / 2)


def test_table_markdown_and_progress(tiny, capsys):
    assert main(["bench", "--data", tiny, "-f", "length,reward", "-k", "2", "--repeat", "1", "--progress"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{tiny}: 2 groups, G = 4; lengths in characters")
    assert lines[1].split()[:3] == ["filter", "k", "len"]
    assert lines[3].split()[:3] == ["length", "2", "0.600"]
    assert "bench [" in err and "2/2 tiny.jsonl: reward k=2" in err
    assert "\rbench [############............] 1/2 tiny.jsonl: length k=2" in err  # half done, half filled
    assert err.endswith("\r")  # the bar is cleared when the jobs are done
    saved = tiny + ".out.json"
    assert (
        main(
            [
                "bench",
                "--data",
                tiny,
                "-f",
                "length",
                "-k",
                "2",
                "--repeat",
                "1",
                "--markdown",
                "--no-progress",
                "--save-json",
                saved,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| filter | k | len kept/all |" in out and "| length | 2 | 0.600 |" in out
    with open(saved) as f:
        assert [(r["filter"], r["kept_length_ratio"]) for r in json.load(f)] == [("length", pytest.approx(0.6))]

    # No bar unless asked for or stderr is a terminal (here it is not).
    assert main(["bench", "--data", tiny, "-f", "length", "-k", "2", "--repeat", "1"]) == 0
    assert "bench [" not in capsys.readouterr().err


def test_plot_needs_matplotlib(tiny, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["bench", "--data", tiny, "-f", "length", "--plot", "x.png"]) == 2
    assert (
        "--plot needs matplotlib, which is not installed: pip install 'gfpo-filters[plot]'" in capsys.readouterr().err
    )


def test_plot_is_written(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plot.png"
    assert (
        main(
            [
                "bench",
                "--data",
                tiny,
                "-f",
                "length,reward",
                "-k",
                "1,2",
                "--repeat",
                "1",
                "--plot",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {out}" in capsys.readouterr().err


def test_real_data_smoke(data_dir, capsys):
    rc, recs, _ = bench_json(capsys, "--data", str(data_dir / "math100_qwen25_g8.jsonl"), "-f", "length", "-k", "2")
    r = recs[0]
    assert rc == 0 and r["n_groups"] == 100 and r["group_sizes"] == [8]
    assert r["kept_length_ratio"] < 1 and r["kept_accuracy"] is not None
