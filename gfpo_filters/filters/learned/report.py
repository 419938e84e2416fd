"""How well a scorer ranks: within-group and pooled AUC next to simple rankings.

Definitions (ties in the scores count one half):

* **within-group AUC** of a group: over the pairs of its completions whose targets differ, the
  share the scores order like the targets. A group whose targets are all equal (a *uniform*
  group) has no such pair and no AUC. The report averages over the *mixed* groups, each counting
  once: what a group filter can act on.
* **pooled AUC**: the same over all pairs of completions (any groups) whose targets differ; for
  0/1 targets the ROC AUC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: the simple rankings a trained scorer is compared with (random ranks every pair at 0.5)
BASELINES = ("shortest_first", "consensus", "random")


def roc_auc(scores: Any, labels: Any) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (ties count one half); NaN if one class is absent."""
    from gfpo_filters.selection import average_rank

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_rank(scores[None, :])[0] + 1.0
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when one side is constant."""
    from gfpo_filters.selection import average_rank

    ra = average_rank(np.asarray(a, dtype=np.float64)[None])[0]
    rb = average_rank(np.asarray(b, dtype=np.float64)[None])[0]
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def pair_auc(scores: Any, targets: Any, chunk: int = 2048) -> float:
    """Over all pairs with different targets, the share ordered right (ties one half); NaN if none."""
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if np.isin(t, (0.0, 1.0)).all():
        return roc_auc(s, t)
    good = total = 0.0
    for a in range(0, s.size, chunk):
        higher = t[a : a + chunk, None] > t[None, :]
        ds = s[a : a + chunk, None] - s[None, :]
        good += float(((ds > 0) + 0.5 * (ds == 0))[higher].sum())
        total += float(higher.sum())
    return good / total if total else float("nan")


def group_aucs(scores: Any, targets: Any, groups: Any) -> np.ndarray:
    """Within-group AUC of every mixed group (in order of first appearance of the group id)."""
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    _, first, codes = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    out = []
    for c in np.argsort(first):  # one small block per group
        idx = np.flatnonzero(codes == c)
        higher = t[idx][:, None] > t[idx][None, :]
        if higher.any():
            ds = s[idx][:, None] - s[idx][None, :]
            out.append(float(((ds > 0) + 0.5 * (ds == 0))[higher].mean()))
    return np.array(out)


def within_group_auc(scores: Any, targets: Any, groups: Any) -> float:
    """Mean within-group AUC over the mixed groups; NaN when there is none."""
    aucs = group_aucs(scores, targets, groups)
    return float(aucs.mean()) if aucs.size else float("nan")


def validation_report(
    scores: Any,
    targets: Any,
    groups: Sequence[Any],
    lengths: Any,
    consensus: Any,
    target_name: str = "reward",
) -> dict[str, Any]:
    """The scorer against shortest-first, consensus and random on held-out groups.

    ``targets`` may hold NaN (completions without a target are left out); ``lengths`` rank
    shortest first; ``consensus`` is the consensus filter's score. ``beats_best_simple`` is
    True when the scorer's within-group AUC exceeds the best of the baselines.
    """
    t = np.asarray(targets, dtype=np.float64)
    ok = np.isfinite(t)
    keys = np.asarray([str(k) for k in groups])[ok]
    t = t[ok]
    rankings = {
        "scorer": np.asarray(scores, dtype=np.float64)[ok],
        "shortest_first": -np.asarray(lengths, dtype=np.float64)[ok],
        "consensus": np.asarray(consensus, dtype=np.float64)[ok],
        "random": np.zeros(t.size),  # all tied: every pair counts one half
    }
    within = {k: within_group_auc(v, t, keys) for k, v in rankings.items()}
    pooled = {k: pair_auc(v, t) for k, v in rankings.items()}
    n_mixed = int(group_aucs(rankings["random"], t, keys).size)
    best = max(BASELINES, key=lambda k: -np.inf if np.isnan(within[k]) else within[k])
    margin = within["scorer"] - within[best]
    return {
        "target": target_name,
        "groups": int(np.unique(keys).size),
        "completions": int(t.size),
        "mixed_groups": n_mixed,
        "within_auc": within,
        "pooled_auc": pooled,
        "best_simple": best,
        "margin": float(margin),
        "beats_best_simple": bool(np.isfinite(margin) and margin > 0),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as the lines ``train-scorer`` prints (ending with a warning when it is one)."""
    lines = [
        f"validation report on held-out prompts ({report['groups']} groups, {report['completions']} completions, "
        f"{report['mixed_groups']} groups mixing {report['target']}s):",
        f"  {'ranking':<16} {'within-group AUC':>17} {'pooled AUC':>11}",
    ]
    for k in ("scorer", *BASELINES):
        lines.append(f"  {k.replace('_', '-'):<16} {report['within_auc'][k]:>17.4f} {report['pooled_auc'][k]:>11.4f}")
    if report["mixed_groups"] == 0:
        lines.append("warning: no held-out group mixes different targets: the within-group AUC cannot be measured")
    elif not report["beats_best_simple"]:
        best = report["best_simple"]
        lines.append(
            f"warning: the trained scorer does not beat the best simple ranking ({best.replace('_', '-')}, "
            f"within-group AUC {report['within_auc'][best]:.4f} against {report['within_auc']['scorer']:.4f}) "
            "on the held-out prompts: filtering with it is no better than that"
        )
    return "\n".join(lines)
