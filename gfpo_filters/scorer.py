"""The built-in learned scorer: hashed word n-grams plus length, into a small torch model.

Used by the ``learned`` filter (``load_filter("learned", checkpoint="scorer.pt")``) and
trained by ``gfpo-filters train-scorer ROLLOUTS.jsonl --out scorer.pt``.

Features of a completion (computed with numpy, stable across processes and machines):

* its words (lower-cased ``\\w+`` runs and single other non-space characters), and their n-grams
  for n = 1 .. ``ngram_max``, each hashed (CRC-32 of the word, a polynomial over the word hashes,
  a splitmix64 finaliser salted by n) into one of ``n_buckets`` feature ids;
* two length features, ``log1p(#words)`` and ``log1p(#characters)``, standardised with the
  training set's mean and standard deviation (stored in the checkpoint).

Model: ``base(length) + head([pooled n-gram embeddings, length])``: an ``nn.EmbeddingBag`` over the
feature ids (mean, sum / sqrt(count), or sum), a linear layer (``hidden=0``) or a one-hidden-layer
ReLU MLP, plus a linear model of the length features alone. Training fits the length-only model
first (epoch 0) and keeps the epoch that does best on held-out prompts. With 0/1 rewards the loss
is logistic and the scorer predicts the probability of reward 1; otherwise squared error on
standardised rewards, and it predicts the reward on its own scale. ``relative=True`` trains on
the reward minus its prompt's mean instead. See ``docs/filters/learned.md``.

This module imports torch only inside functions: the CLI imports it at start-up.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from gfpo_filters.errors import FilterParameterError, GroupInputError
from gfpo_filters.ngrams import MASK64, U64, WORD_PATTERN, mix64, word_ids

FORMAT = "gfpo-filters-scorer"
FORMAT_VERSION = 1
LOSSES = ("auto", "bce", "mse")
POOLINGS = ("mean", "sqrtn", "sum")
TARGETS = ("reward", "correct")

_U = U64
_MASK64 = MASK64


class ScorerCheckpointError(FilterParameterError):
    """A scorer checkpoint is missing, unreadable, not a scorer checkpoint, or incompatible."""


# ---------------------------------------------------------------------- features
@dataclass(frozen=True)
class FeatureConfig:
    """How completions become feature ids; stored in every checkpoint."""

    n_buckets: int = 1 << 18
    ngram_max: int = 2
    lowercase: bool = True
    pattern: str = WORD_PATTERN
    hash_seed: int = 0

    def validate(self, where: str) -> None:
        if not isinstance(self.n_buckets, int) or not 2 <= self.n_buckets <= 1 << 26:
            raise ValueError(f"{where}: n_buckets must be an int between 2 and 2**26, got {self.n_buckets!r}")
        if not isinstance(self.ngram_max, int) or not 1 <= self.ngram_max <= 8:
            raise ValueError(f"{where}: ngram_max must be an int between 1 and 8, got {self.ngram_max!r}")
        if not isinstance(self.hash_seed, int) or not 0 <= self.hash_seed < 2**32:
            raise ValueError(f"{where}: hash_seed must be an int in [0, 2**32), got {self.hash_seed!r}")
        try:
            re.compile(self.pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"{where}: pattern {self.pattern!r} is not a regular expression ({e})") from None


N_DENSE = 2  # log1p(#words), log1p(#characters)


@dataclass
class Features:
    """Feature ids of a batch in bag form: ``ids[offsets[i]:offsets[i+1]]`` belong to text i."""

    ids: np.ndarray  # int64 (total,)
    offsets: np.ndarray  # int64 (B + 1,)
    dense: np.ndarray  # float32 (B, N_DENSE), not standardised

    def __len__(self) -> int:
        return self.offsets.size - 1

    def take(self, index: np.ndarray) -> Features:
        """The features of the texts at ``index`` (vectorised gather of their bags)."""
        starts, ends = self.offsets[index], self.offsets[index + 1]
        counts = ends - starts
        offsets = np.zeros(index.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        pos = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts - offsets[:-1], counts)
        return Features(self.ids[pos], offsets, self.dense[index])


def featurize(texts: Sequence[str], config: FeatureConfig) -> Features:
    """Hashed word n-gram ids and raw length features of ``texts`` (one Python pass to tokenise)."""
    word_idx, n_words, vocab = word_ids(texts, config.pattern, config.lowercase)
    n_chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    seed = config.hash_seed
    word_hash = np.fromiter((zlib.crc32(w.encode("utf-8"), seed) for w in vocab), dtype=np.uint64, count=len(vocab))
    h1 = word_hash[word_idx] + _U(1)
    total = h1.size
    doc_start = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(n_words[:-1], out=doc_start[1:])
    pos_in_doc = np.arange(total, dtype=np.int64) - np.repeat(doc_start, n_words)
    remaining = np.repeat(n_words, n_words) - pos_in_doc  # words from here to the end of the text
    doc_of = np.repeat(np.arange(len(texts), dtype=np.int64), n_words)

    parts_ids, parts_doc = [], []
    h = np.zeros(total, dtype=np.uint64)
    for n in range(1, config.ngram_max + 1):
        if n == 1:
            h = h1.copy()
        else:
            h = h[: total - n + 1] * _U(0x9E3779B97F4A7C15) + h1[n - 1 :]
        ok = remaining[: h.size] >= n
        salted = mix64(h[ok] ^ _U((0xA24BAED4963EE407 * n + seed) & _MASK64))
        parts_ids.append((salted % _U(config.n_buckets)).astype(np.int64))
        parts_doc.append(doc_of[: h.size][ok])
    ids = np.concatenate(parts_ids) if parts_ids else np.zeros(0, dtype=np.int64)
    doc = np.concatenate(parts_doc) if parts_doc else np.zeros(0, dtype=np.int64)
    order = np.argsort(doc, kind="stable")
    counts = np.bincount(doc, minlength=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    dense = np.stack([np.log1p(n_words), np.log1p(n_chars)], axis=1).astype(np.float32)
    return Features(ids[order], offsets, dense)


# ---------------------------------------------------------------------- the model
@cache
def _model_class() -> type:
    import torch
    from torch import nn

    class HashedNgramModel(nn.Module):
        """``base(length) + head([pooled n-gram embeddings, length])`` -> one output.

        ``base`` is a linear model of the standardised length features alone; the last layer of
        ``head`` starts at zero, so an untrained head leaves the length-only model unchanged.
        """

        def __init__(self, n_buckets: int, dim: int, hidden: int, pooling: str) -> None:
            super().__init__()
            self.pooling = pooling
            self.bag = nn.EmbeddingBag(n_buckets, dim, mode="sum", sparse=True)
            nn.init.normal_(self.bag.weight, std=0.1)
            self.register_buffer("dense_mean", torch.zeros(N_DENSE))
            self.register_buffer("dense_std", torch.ones(N_DENSE))
            self.base = nn.Linear(N_DENSE, 1)
            width = dim + N_DENSE
            if hidden:
                self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            else:
                self.head = nn.Sequential(nn.Linear(width, 1))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

        def forward(
            self, ids: torch.Tensor, offsets: torch.Tensor, dense: torch.Tensor, weights: torch.Tensor
        ) -> torch.Tensor:
            pooled = self.bag(ids, offsets, per_sample_weights=weights)
            z = (dense - self.dense_mean) / self.dense_std
            return (self.base(z) + self.head(torch.cat([pooled, z], dim=1))).squeeze(1)

    return HashedNgramModel


@dataclass
class HashedNgramScorer:
    """A trained built-in scorer: feature settings, model, and how to read its output."""

    features: FeatureConfig
    model: Any  # HashedNgramModel
    dim: int
    hidden: int
    loss: str  # "bce" (predicts P(reward = 1)) or "mse" (predicts the reward)
    pooling: str = "mean"  # how n-gram embeddings are pooled: "mean", "sqrtn" (sum / sqrt(count)) or "sum"
    target: str = "reward"
    relative: bool = False  # trained on target minus its prompt's mean: predicts within-prompt differences
    target_mean: float = 0.0
    target_std: float = 1.0
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, features: FeatureConfig, dim: int, hidden: int, loss: str, **kw: Any) -> HashedNgramScorer:
        features.validate("scorer")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"scorer: dim must be a positive int, got {dim!r}")
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"scorer: hidden must be a non-negative int (0 = linear), got {hidden!r}")
        pooling = kw.get("pooling", "mean")
        if pooling not in POOLINGS:
            raise ValueError(f"scorer: pooling must be one of {POOLINGS}, got {pooling!r}")
        model = _model_class()(features.n_buckets, dim, hidden, pooling)
        return cls(features, model, dim, hidden, loss, **kw)

    @property
    def device(self) -> Any:
        return self.model.bag.weight.device

    def to(self, device: Any) -> HashedNgramScorer:
        self.model.to(device)
        return self

    def _tensors(self, feats: Features) -> tuple[Any, Any, Any]:
        import torch

        dev = self.device
        counts = np.diff(feats.offsets)
        if self.pooling == "mean":
            per_text = 1.0 / np.maximum(counts, 1)
        elif self.pooling == "sqrtn":
            per_text = 1.0 / np.sqrt(np.maximum(counts, 1))
        else:
            per_text = np.ones(counts.size)
        weights = np.repeat(per_text.astype(np.float32), counts)
        return (
            torch.from_numpy(feats.ids).to(dev),
            torch.from_numpy(feats.offsets[:-1]).to(dev),
            torch.from_numpy(feats.dense).to(dev),
            torch.from_numpy(weights).to(dev),
        )

    def logits(self, feats: Features) -> Any:
        return self.model(*self._tensors(feats))

    def output_to_reward(self, out: Any) -> Any:
        import torch

        out = out.double()  # float64, so that confident predictions near 0 or 1 stay distinct
        if self.loss == "bce":
            return torch.sigmoid(out)
        return out * self.target_std + self.target_mean

    def predict_features(self, feats: Features, batch_size: int = 4096) -> np.ndarray:
        """Predicted rewards (float64, one per text) in chunks of ``batch_size`` texts."""
        import torch

        out = np.empty(len(feats))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(feats), batch_size):
                    idx = np.arange(s, min(s + batch_size, len(feats)))
                    pred = self.output_to_reward(self.logits(feats.take(idx)))
                    out[s : s + idx.size] = pred.double().cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def predict(self, texts: Sequence[str], batch_size: int = 4096) -> np.ndarray:
        """Predicted rewards of ``texts``; features are built chunk by chunk, so memory stays bounded."""
        out = np.empty(len(texts))
        for s in range(0, len(texts), batch_size):
            chunk = texts[s : s + batch_size]
            out[s : s + len(chunk)] = self.predict_features(featurize(chunk, self.features), batch_size)
        return out

    # ------------------------------------------------------------------ checkpoints
    def to_checkpoint(self) -> dict[str, Any]:
        from gfpo_filters import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "gfpo_filters_version": __version__,
            "features": asdict(self.features),
            "model": {
                "kind": "hashed_ngram",
                "dim": self.dim,
                "hidden": self.hidden,
                "pooling": self.pooling,
                "n_dense": N_DENSE,
            },
            "target": {
                "name": self.target,
                "loss": self.loss,
                "relative": self.relative,
                "mean": self.target_mean,
                "std": self.target_std,
            },
            "training": self.training,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }

    def save(self, path: str | Path) -> None:
        import torch

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_checkpoint(), tmp)
        tmp.replace(path)  # never leave a half-written checkpoint under the real name

    @classmethod
    def load(cls, path: str | Path, device: Any = "cpu") -> HashedNgramScorer:
        """Load a checkpoint (``torch.load(weights_only=True)``); every problem names the file."""
        import pickle
        import zipfile

        import torch

        path = Path(path)
        where = f"scorer checkpoint {str(path)!r}"
        if not path.exists():
            raise ScorerCheckpointError(f"{where} does not exist (train one with 'gfpo-filters train-scorer')")
        if not path.is_file():
            raise ScorerCheckpointError(f"{where} is not a file")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, KeyError) as e:
            raise ScorerCheckpointError(
                f"{where} could not be read: it is corrupt, truncated or not a torch file ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            got = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else f"format {ckpt.get('format')!r}"
            raise ScorerCheckpointError(
                f"{where} is not a gfpo-filters scorer checkpoint (expected format {FORMAT!r}, got {got}); "
                "to score with your own torch model pass model=..., for a Hugging Face directory pass model='path'"
            )
        version = ckpt.get("format_version")
        if version != FORMAT_VERSION:
            raise ScorerCheckpointError(
                f"{where} has format version {version!r}, but this gfpo-filters reads version {FORMAT_VERSION} "
                f"(written by gfpo-filters {ckpt.get('gfpo_filters_version', '?')}); retrain it with "
                "'gfpo-filters train-scorer' or use the gfpo-filters version that wrote it"
            )
        try:
            feats = FeatureConfig(**ckpt["features"])
            feats.validate(where)
            spec, target, state = ckpt["model"], ckpt["target"], ckpt["state_dict"]
            if spec.get("kind") != "hashed_ngram" or spec.get("n_dense") != N_DENSE:
                raise ValueError(f"model kind {spec.get('kind')!r} with {spec.get('n_dense')!r} dense features")
            if target["loss"] not in ("bce", "mse"):
                raise ValueError(f"target loss {target['loss']!r}")
            scorer = cls.new(
                feats,
                int(spec["dim"]),
                int(spec["hidden"]),
                target["loss"],
                pooling=spec["pooling"],
                target=str(target["name"]),
                relative=bool(target["relative"]),
                target_mean=float(target["mean"]),
                target_std=float(target["std"]),
                training=dict(ckpt.get("training") or {}),
            )
            scorer.model.load_state_dict(state, strict=True)
        except KeyError as e:
            raise ScorerCheckpointError(f"{where} is incompatible: it has no {e} entry") from None
        except (TypeError, ValueError, RuntimeError) as e:
            msg = " ".join(str(e).split())
            raise ScorerCheckpointError(f"{where} is incompatible with its own settings: {msg}") from None
        scorer.model.eval()
        return scorer.to(device)


# ---------------------------------------------------------------------- metrics
def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (ties count one half); NaN if one class is absent."""
    from gfpo_filters.selection import average_rank

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_rank(scores[None, :])[0] + 1.0
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from gfpo_filters.selection import average_rank

    ra = average_rank(np.asarray(a, dtype=np.float64)[None])[0]
    rb = average_rank(np.asarray(b, dtype=np.float64)[None])[0]
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def within_prompt_concordance(scores: np.ndarray, targets: np.ndarray, keys: Sequence[Any]) -> float:
    """Over pairs of completions of the same prompt whose targets differ: the fraction the scores
    order like the targets (ties in the scores count one half). For 0/1 targets this is the
    within-prompt ROC AUC. NaN when no prompt has two different targets."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    _, codes = np.unique(np.asarray([str(k) for k in keys]), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    good = total = 0.0
    for idx in np.split(order, bounds):  # one small block per prompt
        t, s = targets[idx], scores[idx]
        higher = t[:, None] > t[None, :]
        ds = s[:, None] - s[None, :]
        good += float(((ds > 0) + 0.5 * (ds == 0))[higher].sum())
        total += float(higher.sum())
    return good / total if total else float("nan")


# ---------------------------------------------------------------------- progress
class ProgressBar:
    """A one-line progress bar on stderr (redrawn at most 10 times a second on a terminal;
    elsewhere only the final line of each bar is written, so logs stay readable)."""

    def __init__(self, total: int, label: str, stream: Any = None, width: int = 30) -> None:
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last = 0.0
        self.done = 0

    def line(self, suffix: str = "") -> str:
        frac = min(self.done / self.total, 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        return f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s{(' ' + suffix) if suffix else ''}"

    def update(self, n: int = 1, suffix: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty and (now - self._last >= 0.1 or self.done >= self.total):
            self._last = now
            self.stream.write("\r" + self.line(suffix))
            self.stream.flush()

    def close(self, suffix: str = "") -> None:
        self.stream.write(("\r" if self.tty else "") + self.line(suffix) + "\n")
        self.stream.flush()


# ---------------------------------------------------------------------- training
@dataclass
class TrainResult:
    scorer: HashedNgramScorer
    history: list[dict[str, float]]
    metric: str  # "auc" (0/1 targets) or "spearman"
    train_index: np.ndarray
    val_index: np.ndarray


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


def _fit_length_base(model: Any, dense: np.ndarray, y: Any, loss_fn: Any) -> None:
    """Fit ``model.base`` (length features only) by full-batch L-BFGS on the training set."""
    import torch

    z = ((torch.from_numpy(dense) - model.dense_mean) / model.dense_std).detach()
    opt = torch.optim.LBFGS(model.base.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        value = loss_fn(model.base(z).squeeze(1), y)
        value.backward()
        return value

    opt.step(closure)


def train_scorer(
    texts: Sequence[str],
    targets: Sequence[float],
    prompt_keys: Sequence[Any],
    *,
    features: FeatureConfig | None = None,
    dim: int = 16,
    hidden: int = 0,
    pooling: str = "mean",
    loss: str = "auto",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.002,
    val_fraction: float = 0.2,
    seed: int = 0,
    target_name: str = "reward",
    relative: bool = False,
    stream: Any = None,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the built-in scorer; examples with a NaN target are left out.

    Whole prompts are held out for validation (``val_fraction`` of them, chosen with
    ``seed``). After every epoch the validation metric is printed to ``stream`` (stderr):
    ROC AUC for 0/1 targets, Spearman correlation otherwise, and with ``relative=True`` the
    within-prompt concordance (:func:`within_prompt_concordance`). Epoch 0 is the length-only
    model (``base`` fitted, n-gram head at zero); the returned scorer holds the weights of the
    epoch with the best validation metric, epoch 0 included.

    ``relative=True`` trains on the target minus the mean target of its prompt (squared loss):
    the scorer then predicts how much better than its prompt's average a completion is, which
    is all a group filter uses, and the difficulty of the prompt cannot leak into the score.
    """
    import torch

    stream = sys.stderr if stream is None else stream
    features = features or FeatureConfig()
    features.validate("train_scorer")
    if loss not in LOSSES:
        raise ValueError(f"train_scorer: loss must be one of {LOSSES}, got {loss!r}")
    for name, value, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or value < lo:
            raise ValueError(f"train_scorer: {name} must be an int >= {lo}, got {value!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"train_scorer: val_fraction must be between 0 and 1, got {val_fraction!r}")
    y_all = np.asarray(targets, dtype=np.float64)
    if not (len(texts) == y_all.size == len(prompt_keys)):
        raise ValueError("train_scorer: texts, targets and prompt_keys must have the same length")
    keep = np.flatnonzero(np.isfinite(y_all))
    if keep.size < 4:
        raise GroupInputError(f"need at least 4 completions with a {target_name}, got {keep.size}")
    texts = [texts[i] for i in keep]
    y = y_all[keep]
    kept_keys = [prompt_keys[i] for i in keep]
    train_idx, val_idx = split_by_prompt(kept_keys, val_fraction, seed)
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    if relative:
        if loss == "bce":
            raise ValueError("train_scorer: relative=True predicts reward differences; use loss='mse' or 'auto'")
        loss = "mse"
        _, codes = np.unique(np.asarray([str(k) for k in kept_keys]), return_inverse=True)
        y_fit = y - (np.bincount(codes, weights=y) / np.bincount(codes))[codes]
    else:
        y_fit = y
    if loss == "auto":
        loss = "bce" if binary else "mse"
    if loss == "bce" and not binary:
        raise ValueError(f"train_scorer: loss='bce' needs 0/1 targets, but the {target_name}s take other values")
    metric = "within_prompt" if relative else "auc" if binary else "spearman"
    if loss == "bce":
        t_mean, t_std = 0.0, 1.0
    else:
        t_mean = 0.0 if relative else float(y_fit[train_idx].mean())
        t_std = float(y_fit[train_idx].std() or 1.0)

    torch.manual_seed(seed)
    scorer = HashedNgramScorer.new(
        features,
        dim,
        hidden,
        loss,
        pooling=pooling,
        target=target_name,
        relative=bool(relative),
        target_mean=t_mean,
        target_std=t_std,
    )
    model = scorer.model
    feats = featurize(texts, features)
    dense_train = feats.dense[train_idx]
    model.dense_mean.copy_(torch.from_numpy(dense_train.mean(axis=0)))
    model.dense_std.copy_(torch.from_numpy(np.maximum(dense_train.std(axis=0), 1e-6)))
    y_t = torch.from_numpy(((y_fit - t_mean) / t_std).astype(np.float32))
    loss_fn = torch.nn.BCEWithLogitsLoss() if loss == "bce" else torch.nn.MSELoss()
    _fit_length_base(model, feats.dense[train_idx], y_t[torch.from_numpy(train_idx)], loss_fn)
    sparse_params = [model.bag.weight]
    dense_params = [p for n_, p in model.named_parameters() if not n_.startswith("bag.")]
    opt_sparse = torch.optim.SparseAdam(sparse_params, lr=lr)
    opt_dense = torch.optim.Adam(dense_params, lr=lr)
    rng = np.random.default_rng(seed)
    val_feats = feats.take(val_idx)
    y_val = y[val_idx]
    val_keys = [kept_keys[i] for i in val_idx]

    def validate() -> tuple[float, float]:
        pred = scorer.predict_features(val_feats)
        within = within_prompt_concordance(pred, y_val, val_keys)
        if metric == "within_prompt":
            return within, within
        return (roc_auc(pred, y_val) if metric == "auc" else spearman(pred, y_val)), within

    history: list[dict[str, float]] = []
    n_batches = math.ceil(train_idx.size / batch_size)
    print(
        f"training on {train_idx.size} completions, validating on {val_idx.size} "
        f"({len(set(str(prompt_keys[keep[i]]) for i in val_idx))} held-out prompts); loss {loss}, metric {metric}",
        file=stream,
    )
    # Epoch 0 is the length-only model: the n-gram part is kept only if it beats it on validation.
    value, within = validate()
    history.append({"epoch": 0, "train_loss": float("nan"), f"val_{metric}": value, "val_within_prompt": within})
    print(f"epoch 0/{epochs} (length only)  val {metric} {value:.4f}  within-prompt {within:.4f}", file=stream)
    best = value if np.isfinite(value) else -math.inf
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = rng.permutation(train_idx)
        bar = ProgressBar(n_batches, f"epoch {epoch}/{epochs}", stream) if progress else None
        total_loss = 0.0
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            out = scorer.logits(feats.take(idx))
            batch_loss = loss_fn(out, y_t[torch.from_numpy(idx)])
            opt_sparse.zero_grad()
            opt_dense.zero_grad()
            batch_loss.backward()
            opt_sparse.step()
            opt_dense.step()
            total_loss += float(batch_loss.detach()) * idx.size
            if bar:
                bar.update(1, f"loss {total_loss / min((b + 1) * batch_size, train_idx.size):.4f}")
        value, within = validate()
        record = {
            "epoch": epoch,
            "train_loss": total_loss / train_idx.size,
            f"val_{metric}": value,
            "val_within_prompt": within,
        }
        history.append(record)
        summary = f"train loss {record['train_loss']:.4f}  val {metric} {value:.4f}  within-prompt {within:.4f}"
        if bar:
            bar.close(summary)
        else:
            print(f"epoch {epoch}/{epochs}  {summary}", file=stream)
        if np.isfinite(value) and value > best:
            best, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    scorer.training = {
        **(metadata or {}),
        "n_train": int(train_idx.size),
        "n_val": int(val_idx.size),
        "val_prompts": sorted({str(prompt_keys[keep[i]]) for i in val_idx}),
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "epochs": int(epochs),
        "best_epoch": int(best_epoch),
        "metric": metric,
        "val_metric": float(best) if np.isfinite(best) else float("nan"),
        "relative": bool(relative),
        "lr": float(lr),
        "batch_size": int(batch_size),
    }
    print(
        f"best epoch {best_epoch}{' (length only: the n-gram features did not help)' if best_epoch == 0 else ''}: "
        f"val {metric} {best:.4f}",
        file=stream,
    )
    return TrainResult(scorer, history, metric, keep[train_idx], keep[val_idx])


# ---------------------------------------------------------------------- command line
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rollouts", nargs="+", type=Path, help="rollout file(s) in the JSONL format (see rollouts.py)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the checkpoint (e.g. scorer.pt)")
    parser.add_argument("--target", choices=TARGETS, default="reward", help="what to predict (default: reward)")
    parser.add_argument("--loss", choices=LOSSES, default="auto", help="auto: logistic for 0/1 targets, else squared")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.002, help="Adam learning rate (default 0.002)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of prompts held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and shuffling")
    parser.add_argument("--dim", type=int, default=16, help="embedding size of the n-gram features")
    parser.add_argument("--hidden", type=int, default=0, help="hidden units of the MLP head; 0 = linear")
    parser.add_argument(
        "--pooling", choices=POOLINGS, default="mean", help="pooling of n-gram embeddings: mean, sum/sqrt(n), or sum"
    )
    parser.add_argument("--buckets", type=int, default=1 << 18, help="number of hashed feature ids (2**18)")
    parser.add_argument("--ngram-max", type=int, default=2, help="word n-grams from 1 up to this n (default 2)")
    parser.add_argument(
        "--relative",
        action="store_true",
        help="train on reward minus its prompt's mean reward: ranks completions within a prompt (the filter's use)",
    )
    parser.add_argument("--no-progress", action="store_true", help="one summary line per epoch, no bar")


def run(args: argparse.Namespace) -> int:
    from gfpo_filters.errors import GFPOFilterError
    from gfpo_filters.rollouts import read_rollouts

    if not args.out.parent.is_dir():  # fail before training, not after
        print(
            f"gfpo-filters train-scorer: error: cannot write {str(args.out)!r}: "
            f"directory {str(args.out.parent)!r} does not exist",
            file=sys.stderr,
        )
        return 2
    try:
        texts, targets, keys = [], [], []
        for path in args.rollouts:
            for g in read_rollouts(path):
                values = g.rewards if args.target == "reward" else g.correct
                key = f"{path}:{g.prompt_id}"
                texts.extend(g.texts)
                targets.extend(values)
                keys.extend([key] * g.size)
        result = train_scorer(
            texts,
            targets,
            keys,
            features=FeatureConfig(n_buckets=args.buckets, ngram_max=args.ngram_max),
            dim=args.dim,
            hidden=args.hidden,
            pooling=args.pooling,
            loss=args.loss,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            val_fraction=args.val_fraction,
            seed=args.seed,
            target_name=args.target,
            relative=args.relative,
            progress=not args.no_progress,
            metadata={"rollouts": [str(p) for p in args.rollouts]},
        )
    except (GFPOFilterError, FileNotFoundError, ValueError) as e:
        print(f"gfpo-filters train-scorer: error: {e}", file=sys.stderr)
        return 2
    try:
        result.scorer.save(args.out)
    except (OSError, RuntimeError) as e:
        print(f"gfpo-filters train-scorer: error: cannot write {str(args.out)!r}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (use: load_filter('learned', checkpoint={str(args.out)!r}))", file=sys.stderr)
    return 0
