"""Training the built-in scorer (``gfpo-filters train-scorer``): objectives, epochs, the report.

Objectives (``objective=``):

* ``"pairwise"``: RankNet-style logistic loss on every pair of completions of the same
  prompt whose targets differ, ``log(1 + exp(-(ŷ_i - ŷ_j)))`` for ``y_i > y_j``, averaged within
  the group, then over groups: each mixed group counts once, however many pairs it has.
* ``"listwise"`` (default): ListNet-style cross-entropy between ``softmax(ŷ)`` over the group and
  ``softmax`` of the group's standardised targets, averaged over mixed groups. Chosen as the default
  on validation prompts of gsm8k (``benchmarks/learned_tune.py``; pairwise was within 0.01).
* ``"pointwise"``: predict each completion's target (logistic for 0/1 targets, else squared
  error on standardised targets): the objective of format-1 scorers.
* ``"relative"``: squared error on the target minus its prompt's mean.

Under the two ranking objectives a group whose targets are all equal has no pair to order and is
left out of training entirely, so it cannot dominate the loss. Whole prompts are held out for
validation; epoch 0 is the dense-features-only model (``base`` fitted by L-BFGS on the same
objective) and the best epoch on the held-out prompts is kept.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gfpo_filters.errors import GroupInputError
from gfpo_filters.filters.learned.features import FeatureConfig, Features, consensus_scores, featurize
from gfpo_filters.filters.learned.model import OBJECTIVES, RANKING, HashedNgramScorer
from gfpo_filters.filters.learned.report import (
    format_report,
    pair_auc,
    spearman,
    validation_report,
    within_group_auc,
)

LOSSES = ("auto", "bce", "mse")


@dataclass
class TrainResult:
    scorer: HashedNgramScorer
    history: list[dict[str, float]]
    metric: str  # what picks the epoch: "within" (within-group AUC), "auc" or "spearman" (pooled)
    train_index: np.ndarray  # examples trained on (with a target), indices into the input
    val_index: np.ndarray  # held-out examples with a target
    report: dict[str, Any]


def split_by_prompt(prompt_keys: Sequence[Any], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation examples; whole prompts go to one side (seeded)."""
    keys = [str(k) for k in prompt_keys]
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise GroupInputError(
            f"need completions of at least 2 prompts to hold some out for validation, got {len(unique)}"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(unique))
    n_val = min(max(1, int(round(val_fraction * len(unique)))), len(unique) - 1)
    val_keys = {unique[i] for i in perm[:n_val]}
    is_val = np.fromiter((k in val_keys for k in keys), dtype=bool, count=len(keys))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@dataclass
class _Batchable:
    """Examples laid out group by group: ``members[g]`` are positions in ``feats`` (-1 = padding)."""

    feats: Features
    order: np.ndarray  # position -> index of the example in the input
    members: np.ndarray  # (n_groups, G_max) int64
    keys: list[str]  # prompt key of each group

    def grouped(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per position) as (n_groups, G_max), NaN in the padding."""
        padded = self.members < 0
        return np.where(padded, np.nan, values[np.where(padded, 0, self.members)])


def _layout(texts: Sequence[str], keys: list[str], config: FeatureConfig) -> _Batchable:
    """Group examples by prompt key; featurise each group size in one batch."""
    uniq, first, codes = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(uniq.size)  # groups in order of first appearance
    codes = rank[codes]
    group_keys = [str(k) for k in uniq[np.argsort(first)]]
    by_group = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=uniq.size)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    parts, orders, member_rows = [], [], {}
    pos = 0
    for size in np.unique(sizes):
        gs = np.flatnonzero(sizes == size)
        idx = by_group[(starts[gs][:, None] + np.arange(size)[None, :]).reshape(-1)]
        parts.append(featurize([texts[i] for i in idx], (gs.size, int(size)), config))
        orders.append(idx)
        for j, gi in enumerate(gs):
            member_rows[int(gi)] = pos + j * int(size) + np.arange(size)
        pos += idx.size
    g_max = int(sizes.max())
    members = np.full((uniq.size, g_max), -1, dtype=np.int64)
    for gi, row in member_rows.items():
        members[gi, : row.size] = row
    return _Batchable(Features.concat(parts), np.concatenate(orders), members, group_keys)


def _objective_loss(objective: str, s: Any, y: Any, valid: Any) -> Any:
    """Mean loss of a batch of groups: ``s`` outputs, ``y`` fitted targets, ``valid`` mask, all (B, G)."""
    import torch
    import torch.nn.functional as F

    if objective in ("pointwise_bce", "mse"):
        fn = F.binary_cross_entropy_with_logits if objective == "pointwise_bce" else F.mse_loss
        return fn(s[valid], y[valid])
    yi = torch.where(valid, y, torch.full_like(y, -math.inf))
    if objective == "pairwise":
        pairs = (yi[:, :, None] > yi[:, None, :]) & valid[:, None, :]
        per_pair = F.softplus(-(s[:, :, None] - s[:, None, :]))
        n_pairs = pairs.sum(dim=(1, 2))
        mixed = n_pairs > 0
        per_group = (per_pair * pairs).sum(dim=(1, 2))[mixed] / n_pairs[mixed]
        return per_group.mean() if per_group.numel() else None
    # listwise: softmax cross-entropy against softmax of the standardised targets
    cnt = valid.sum(dim=1, keepdim=True).clamp(min=1)
    mean = torch.where(valid, y, torch.zeros_like(y)).sum(dim=1, keepdim=True) / cnt
    var = (torch.where(valid, y - mean, torch.zeros_like(y)) ** 2).sum(dim=1, keepdim=True) / cnt
    mixed = var[:, 0] > 0
    z = torch.where(valid, (y - mean) / var.clamp(min=1e-12).sqrt(), torch.full_like(y, -math.inf))
    q = torch.softmax(z, dim=1)
    logp = torch.log_softmax(torch.where(valid, s, torch.full_like(s, -math.inf)), dim=1)
    per_group = -(torch.where(valid, q * logp, torch.zeros_like(s))).sum(dim=1)[mixed]
    return per_group.mean() if per_group.numel() else None


def _loss_and_metric(objective: str, loss: str, binary: bool, target_name: str) -> tuple[str, str, str]:
    """The loss stored in the checkpoint, the loss computed, and the metric that picks the epoch."""
    if objective == "pointwise":
        loss = ("bce" if binary else "mse") if loss == "auto" else loss
        if loss == "bce" and not binary:
            raise ValueError(f"train_scorer: loss='bce' needs 0/1 targets, but the {target_name}s take other values")
        return loss, ("pointwise_bce" if loss == "bce" else "mse"), ("auc" if binary else "spearman")
    if objective == "relative":
        return "mse", "mse", "within"
    return objective, objective, "within"


def _held_out_report(
    scorer: HashedNgramScorer, texts: list[str], sizes: np.ndarray, feats: Features, y: np.ndarray, target_name: str
) -> dict[str, Any]:
    """The validation report of ``scorer`` on held-out groups laid out one after another (``sizes``)."""
    consensus = np.empty(len(texts))
    start = 0
    for size in sizes.tolist():  # one group at a time: validation is small
        consensus[start : start + size] = consensus_scores(texts[start : start + size], (1, size))[0]
        start += size
    keys = np.repeat(np.arange(sizes.size), sizes)
    scores = scorer.output_to_score(scorer.raw_output(feats))
    return validation_report(scores, y, keys, [len(t) for t in texts], consensus, target_name)


def _checked_arguments(
    features: FeatureConfig | None,
    objective: str,
    loss: str,
    epochs: int,
    batch_size: int,
    val_fraction: float,
    relative: bool,
) -> tuple[FeatureConfig, str, str]:
    """The feature config, objective and loss to train with, after checking every option."""
    if relative:
        if loss == "bce":
            raise ValueError("train_scorer: relative=True predicts reward differences; use loss='mse' or 'auto'")
        objective = "relative"
        loss = "auto"  # relative is always squared error ("mse" was the only loss it took)
    features = features or FeatureConfig()
    features.validate("train_scorer")
    if objective not in OBJECTIVES:
        raise ValueError(f"train_scorer: objective must be one of {OBJECTIVES}, got {objective!r}")
    if loss not in LOSSES:
        raise ValueError(f"train_scorer: loss must be one of {LOSSES}, got {loss!r}")
    if loss != "auto" and objective != "pointwise":
        raise ValueError(f"train_scorer: loss={loss!r} applies to objective='pointwise' only")
    for name, value, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or value < lo:
            raise ValueError(f"train_scorer: {name} must be an int >= {lo}, got {value!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"train_scorer: val_fraction must be between 0 and 1, got {val_fraction!r}")
    return features, objective, loss


def _checked_targets(
    texts: Sequence[str], targets: Sequence[float], prompt_keys: Sequence[Any], target_name: str
) -> np.ndarray:
    """``targets`` as float64, after checking the lengths and that enough of them are known."""
    y_in = np.asarray(targets, dtype=np.float64)
    if not (len(texts) == y_in.size == len(prompt_keys)):
        raise ValueError("train_scorer: texts, targets and prompt_keys must have the same length")
    has_target = np.isfinite(y_in)
    if int(has_target.sum()) < 4:
        raise GroupInputError(f"need at least 4 completions with a {target_name}, got {int(has_target.sum())}")
    return y_in


@dataclass
class _Examples:
    """The examples laid out group by group (see :class:`_Batchable`), with their targets by position."""

    data: _Batchable
    y: np.ndarray  # target of each position, NaN where missing
    finite: np.ndarray  # y is known
    is_val: np.ndarray  # the position's prompt is held out
    train_ex: np.ndarray  # trained on: known target, prompt not held out

    @property
    def binary(self) -> bool:
        return bool(np.isin(self.y[self.finite], (0.0, 1.0)).all())


def _examples(
    texts: Sequence[str], y_in: np.ndarray, keys: list[str], val_in: np.ndarray, config: FeatureConfig
) -> _Examples:
    """Lay the examples out by group and mark which positions are held out and which are trained on."""
    data = _layout(texts, keys, config)
    y = y_in[data.order]
    finite = np.isfinite(y)
    is_val_ex = np.zeros(y_in.size, dtype=bool)
    is_val_ex[val_in] = True
    is_val = is_val_ex[data.order]
    return _Examples(data, y, finite, is_val, finite & ~is_val)


def _fitted_targets(ex: _Examples, objective: str, loss: str) -> tuple[np.ndarray, float, float]:
    """What the model fits at each position (before standardising), and the standardisation (mean, std)."""
    y, members = ex.y, ex.data.members
    padded = members < 0
    y_fit = y.copy()
    if objective == "relative":  # the target minus its group's mean
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # groups without any target
            gmean = np.nan_to_num(np.nanmean(ex.data.grouped(y), axis=1))
        row_of = np.empty(y.size, dtype=np.int64)
        row_of[members[~padded]] = np.nonzero(~padded)[0]
        y_fit = y - gmean[row_of]
    t_mean, t_std = 0.0, 1.0
    if loss == "mse":
        t_mean = 0.0 if objective == "relative" else float(y_fit[ex.train_ex].mean())
        t_std = float(y_fit[ex.train_ex].std() or 1.0)
    return y_fit, t_mean, t_std


def _split_groups(ex: _Examples, objective: str, target_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the groups trained on and of the held-out groups."""
    group_val = ex.is_val[ex.data.members[:, 0]]
    targets_by_group = ex.data.grouped(ex.y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # groups without any target
        spread = np.nan_to_num(np.nanmax(targets_by_group, axis=1) - np.nanmin(targets_by_group, axis=1))
    # ranking objectives learn only from groups with two different targets; the others from any target
    usable = spread > 0 if objective in RANKING else np.isfinite(targets_by_group).any(axis=1)
    train_groups = np.flatnonzero(~group_val & usable)
    if train_groups.size == 0:
        raise GroupInputError(
            f"no training prompt has completions with different {target_name}s: nothing to rank "
            "(use objective='pointwise' to predict the value itself)"
        )
    return train_groups, np.flatnonzero(group_val)


@dataclass
class _Batches:
    """Features and loss of a batch of groups (rows of ``data.members``)."""

    data: _Batchable
    y_t: Any  # standardised fitted targets by position (torch float32, 0 where missing)
    finite: np.ndarray
    kind: str  # the loss computed (see _objective_loss)

    def features(self, rows: np.ndarray) -> tuple[Features, np.ndarray]:
        """The features of the groups' members, and each member's place in them (-1 = padding)."""
        pos = self.data.members[rows]
        flat = pos[pos >= 0]
        local = np.full(pos.shape, -1, dtype=np.int64)
        local[pos >= 0] = np.arange(flat.size)
        return self.data.feats.take(flat), local

    def loss(self, rows: np.ndarray, out: Any, local: np.ndarray) -> Any:
        """The objective on model outputs ``out`` of the features from :meth:`features`; None if nothing to learn."""
        import torch

        pos = self.data.members[rows]
        pad = pos < 0
        s = out[torch.from_numpy(np.where(pad, 0, local))]
        yy = self.y_t[torch.from_numpy(np.where(pad, 0, pos))]
        v = torch.from_numpy(~pad & self.finite[np.where(pad, 0, pos)])
        return _objective_loss(self.kind, s, yy, v)


def _fit_dense_base(model: Any, batches: _Batches, train_groups: np.ndarray) -> None:
    """Epoch 0: the dense-features-only model, by full-batch L-BFGS on the same objective."""
    import torch

    tr_feats, tr_local = batches.features(train_groups)
    z0 = model.standardize(torch.from_numpy(tr_feats.dense)).detach()
    opt = torch.optim.LBFGS(model.base.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        value = batches.loss(train_groups, model.base(z0).squeeze(1), tr_local)
        value.backward()
        return value

    opt.step(closure)


@dataclass
class _Validation:
    """The held-out groups, laid out one after another, and the metric that picks the epoch."""

    pos: np.ndarray  # positions in the layout
    sizes: np.ndarray  # members of each held-out group
    feats: Features
    y: np.ndarray
    keys: np.ndarray  # held-out group of each example
    metric: str

    @classmethod
    def of(cls, ex: _Examples, val_groups: np.ndarray, metric: str) -> _Validation:
        padded = ex.data.members < 0
        pos = ex.data.members[val_groups][~padded[val_groups]]
        sizes = (~padded[val_groups]).sum(axis=1)
        return cls(pos, sizes, ex.data.feats.take(pos), ex.y[pos], np.repeat(np.arange(val_groups.size), sizes), metric)

    def score(self, scorer: HashedNgramScorer) -> tuple[float, float]:
        """The metric of ``scorer`` on the held-out examples with a target, and its within-group AUC."""
        ok = np.isfinite(self.y)
        pred = scorer.output_to_score(scorer.raw_output(self.feats))
        within = within_group_auc(pred[ok], self.y[ok], self.keys[ok])
        if self.metric == "within":
            return within, within
        if self.metric == "auc":
            return pair_auc(pred[ok], self.y[ok]), within
        return spearman(pred[ok], self.y[ok]), within


def _metric_label(metric: str) -> str:
    return "within-group AUC" if metric == "within" else metric


def _summary(metric: str, value: float, within: float) -> str:
    """The validation part of an epoch's line."""
    return f"val {_metric_label(metric)} {value:.4f}" + (
        "" if metric == "within" else f"  within-group AUC {within:.4f}"
    )


def _train_epoch(
    scorer: HashedNgramScorer, batches: _Batches, groups: np.ndarray, batch_size: int, optimizers: list[Any], bar: Any
) -> tuple[float, int]:
    """One pass over ``groups`` (already shuffled): the summed loss (weighted by groups) and the groups counted."""
    total_loss, seen = 0.0, 0
    for b in range(math.ceil(groups.size / batch_size)):
        rows = groups[b * batch_size : (b + 1) * batch_size]
        bf, local = batches.features(rows)
        value_t = batches.loss(rows, scorer.logits(bf), local)
        bar.update(1)
        if value_t is None:
            continue
        for opt in optimizers:
            opt.zero_grad()
        value_t.backward()
        for opt in optimizers:
            opt.step()
        total_loss += float(value_t.detach()) * rows.size
        seen += rows.size
        bar.set_postfix_str(f"loss {total_loss / seen:.4f}", refresh=False)
    return total_loss, seen


def _train_epochs(
    scorer: HashedNgramScorer,
    batches: _Batches,
    train_groups: np.ndarray,
    val: _Validation,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    stream: Any,
    progress: bool,
) -> tuple[list[dict[str, float]], float, int]:
    """Adam epochs from the epoch-0 model; load the best epoch on ``val``. Returns history, best value, best epoch."""
    import torch
    from tqdm.auto import tqdm

    model, metric = scorer.model, val.metric
    dense_params = [p for n_, p in model.named_parameters() if not n_.startswith("bag.")]
    optimizers = [torch.optim.SparseAdam([model.bag.weight], lr=lr), torch.optim.Adam(dense_params, lr=lr)]
    rng = np.random.default_rng(seed)
    value, within = val.score(scorer)
    history: list[dict[str, float]] = [
        {"epoch": 0, "train_loss": float("nan"), f"val_{metric}": value, "val_within": within}
    ]
    print(f"epoch 0/{epochs} (dense features only)  {_summary(metric, value, within)}", file=stream)
    best = value if np.isfinite(value) else -math.inf
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = rng.permutation(train_groups)
        n_batches = math.ceil(train_groups.size / batch_size)
        disable = None if progress else True
        with tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", file=stream, disable=disable, leave=False) as bar:
            total_loss, seen = _train_epoch(scorer, batches, perm, batch_size, optimizers, bar)
        value, within = val.score(scorer)
        record = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), f"val_{metric}": value, "val_within": within}
        history.append(record)
        print(
            f"epoch {epoch}/{epochs}  train loss {record['train_loss']:.4f}  {_summary(metric, value, within)}",
            file=stream,
        )
        if np.isfinite(value) and value > best:
            best, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return history, best, best_epoch


def _new_scorer(
    ex: _Examples,
    features: FeatureConfig,
    dim: int,
    hidden: int,
    pooling: str,
    objective: str,
    loss: str,
    target_name: str,
    t_mean: float,
    t_std: float,
    seed: int,
) -> HashedNgramScorer:
    """A freshly initialised scorer (seeded), its dense features standardised on the training examples."""
    import torch

    torch.manual_seed(seed)
    scorer = HashedNgramScorer.new(
        features,
        dim,
        hidden,
        objective=objective,
        loss=loss,
        pooling=pooling,
        target=target_name,
        target_mean=t_mean,
        target_std=t_std,
    )
    dense_train = ex.data.feats.dense[ex.train_ex]
    scorer.model.dense_mean.copy_(torch.from_numpy(dense_train.mean(axis=0)))
    scorer.model.dense_std.copy_(torch.from_numpy(np.maximum(dense_train.std(axis=0), 1e-6)))
    return scorer


def _final_report(
    scorer: HashedNgramScorer,
    val: _Validation,
    val_texts: list[str],
    best: float,
    best_epoch: int,
    target_name: str,
    stream: Any,
) -> dict[str, Any]:
    """Print the best epoch and the report on the held-out prompts (the scorer against simple rankings)."""
    print(
        f"best epoch {best_epoch}"
        f"{' (dense features only: the n-gram features did not help)' if best_epoch == 0 else ''}: "
        f"val {_metric_label(val.metric)} {best:.4f}",
        file=stream,
    )
    report = _held_out_report(scorer, val_texts, val.sizes, val.feats, val.y, target_name)
    print(format_report(report), file=stream)
    return report


def _print_plan(
    ex: _Examples, train_groups: np.ndarray, val_groups: np.ndarray, objective: str, metric: str, stream: Any
) -> None:
    """The line that opens training: how much is trained on and validated on, and how."""
    print(
        f"training on {int(ex.train_ex.sum())} completions ({train_groups.size} groups used), validating on "
        f"{int((ex.is_val & ex.finite).sum())} ({val_groups.size} held-out prompts); objective {objective}, "
        f"metric {'within-group AUC' if metric == 'within' else 'pooled ' + metric}",
        file=stream,
    )


def _settings(
    *,
    val_fraction: float,
    seed: int,
    epochs: int,
    best_epoch: int,
    objective: str,
    metric: str,
    best: float,
    lr: float,
    batch_size: int,
) -> dict[str, Any]:
    """How the scorer was trained and which epoch was kept, as stored in ``scorer.training``."""
    return {
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "epochs": int(epochs),
        "best_epoch": int(best_epoch),
        "objective": objective,
        "metric": metric,
        "val_metric": float(best) if np.isfinite(best) else float("nan"),
        "lr": float(lr),
        "batch_size": int(batch_size),
    }


def train_scorer(
    texts: Sequence[str],
    targets: Sequence[float],
    prompt_keys: Sequence[Any],
    *,
    features: FeatureConfig | None = None,
    objective: str = "listwise",
    dim: int = 16,
    hidden: int = 0,
    pooling: str = "mean",
    loss: str = "auto",
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 0.01,
    val_fraction: float = 0.2,
    seed: int = 0,
    target_name: str = "reward",
    relative: bool = False,
    stream: Any = None,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the built-in scorer on completions grouped by ``prompt_keys`` (see the module docstring).

    ``batch_size`` counts groups. Examples with a NaN target still count in their group's
    features but not in the loss or the metrics. After training, the validation report
    (:func:`~gfpo_filters.filters.learned.report.validation_report`) is printed to ``stream``
    (stderr) and stored in ``scorer.training["report"]``. ``relative=True`` is
    ``objective="relative"``.
    """
    import torch

    stream = sys.stderr if stream is None else stream
    features, objective, loss = _checked_arguments(
        features, objective, loss, epochs, batch_size, val_fraction, relative
    )
    y_in = _checked_targets(texts, targets, prompt_keys, target_name)
    keys = [str(k) for k in prompt_keys]
    train_in, val_in = split_by_prompt(keys, val_fraction, seed)
    ex = _examples(texts, y_in, keys, val_in, features)
    loss, kind, metric = _loss_and_metric(objective, loss, ex.binary, target_name)
    y_fit, t_mean, t_std = _fitted_targets(ex, objective, loss)
    scorer = _new_scorer(ex, features, dim, hidden, pooling, objective, loss, target_name, t_mean, t_std, seed)
    y_t = torch.from_numpy(np.where(ex.finite, (y_fit - t_mean) / t_std, 0.0).astype(np.float32))
    train_groups, val_groups = _split_groups(ex, objective, target_name)
    batches = _Batches(ex.data, y_t, ex.finite, kind)
    _fit_dense_base(scorer.model, batches, train_groups)

    val = _Validation.of(ex, val_groups, metric)
    _print_plan(ex, train_groups, val_groups, objective, metric, stream)
    history, best, best_epoch = _train_epochs(
        scorer, batches, train_groups, val, epochs, batch_size, lr, seed, stream, progress
    )
    val_texts = [texts[i] for i in ex.data.order[val.pos]]
    report = _final_report(scorer, val, val_texts, best, best_epoch, target_name, stream)
    train_index = np.sort(ex.data.order[ex.train_ex])
    val_index = np.sort(ex.data.order[ex.is_val & ex.finite])
    scorer.training = {
        **(metadata or {}),
        "n_train": int(train_index.size),
        "n_val": int(val_index.size),
        "val_prompts": sorted({keys[i] for i in val_in}),
        **_settings(
            val_fraction=val_fraction,
            seed=seed,
            epochs=epochs,
            best_epoch=best_epoch,
            objective=objective,
            metric=metric,
            best=best,
            lr=lr,
            batch_size=batch_size,
        ),
        "report": report,
    }
    return TrainResult(scorer, history, metric, train_index, val_index, report)
