"""The built-in scorer's model and checkpoints (torch is imported only inside functions).

``ŷ = base(z) + head([pool(E[ids]), z])``: ``z`` the standardised dense features, ``E`` an
``nn.EmbeddingBag(n_buckets, dim)`` over the n-gram ids, ``pool`` the mean, sum / √count or sum,
``head`` linear (``hidden=0``) or one hidden ReLU layer; ``base`` is a linear model of the dense
features alone and the last layer of ``head`` starts at zero. With a linear head the whole
model is linear in the pooled embedding, so inference folds ``E`` and the head into one weight
per n-gram bucket and scores with numpy (a gather and a per-completion sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from gfpo_filters.errors import FilterParameterError
from gfpo_filters.filters.learned.features import FeatureConfig, Features, featurize

FORMAT = "gfpo-filters-scorer"
#: 2: word hashes of gfpo_filters.ngrams, group features, ranking objectives (1: n-grams and length only)
FORMAT_VERSION = 2
POOLINGS = ("mean", "sqrtn", "sum")
OBJECTIVES = ("pairwise", "listwise", "pointwise", "relative")
RANKING = ("pairwise", "listwise")
RETRAIN = "retrain it with 'gfpo-filters train-scorer ROLLOUTS.jsonl --out scorer.pt'"


class ScorerCheckpointError(FilterParameterError):
    """A scorer checkpoint is missing, unreadable, not a scorer checkpoint, or incompatible."""


@cache
def _model_class() -> type:
    import torch
    from torch import nn

    class HashedNgramModel(nn.Module):
        """``base(z) + head([pooled n-gram embeddings, z])`` -> one output per completion."""

        def __init__(self, n_buckets: int, dim: int, hidden: int, n_dense: int) -> None:
            super().__init__()
            # one more row: the padding id n_buckets (windows past a text's end), zero and never trained
            self.bag = nn.EmbeddingBag(n_buckets + 1, dim, mode="sum", sparse=True, padding_idx=n_buckets)
            nn.init.normal_(self.bag.weight, std=0.1)
            with torch.no_grad():
                self.bag.weight[n_buckets].zero_()
            self.register_buffer("dense_mean", torch.zeros(n_dense))
            self.register_buffer("dense_std", torch.ones(n_dense))
            self.base = nn.Linear(n_dense, 1)
            width = dim + n_dense
            if hidden:
                self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            else:
                self.head = nn.Sequential(nn.Linear(width, 1))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

        def standardize(self, dense: torch.Tensor) -> torch.Tensor:
            return (dense - self.dense_mean) / self.dense_std

        def forward(
            self, ids: torch.Tensor, offsets: torch.Tensor, dense: torch.Tensor, weights: torch.Tensor
        ) -> torch.Tensor:
            pooled = self.bag(ids, offsets, per_sample_weights=weights)
            z = self.standardize(dense)
            return (self.base(z) + self.head(torch.cat([pooled, z], dim=1))).squeeze(1)

    return HashedNgramModel


def pooling_weights(counts: np.ndarray, pooling: str) -> np.ndarray:
    """Per-text weight of each n-gram embedding: 1/count, 1/sqrt(count) or 1."""
    if pooling == "mean":
        return 1.0 / np.maximum(counts, 1)
    if pooling == "sqrtn":
        return 1.0 / np.sqrt(np.maximum(counts, 1))
    return np.ones(counts.size)


@dataclass
class HashedNgramScorer:
    """A trained built-in scorer: feature settings, model, and how to read its output."""

    features: FeatureConfig
    model: Any  # HashedNgramModel
    dim: int
    hidden: int
    objective: str = "listwise"
    loss: str = "listwise"  # "pairwise", "listwise", "bce" (predicts P(reward = 1)) or "mse"
    pooling: str = "mean"
    target: str = "reward"
    target_mean: float = 0.0
    target_std: float = 1.0
    training: dict[str, Any] = field(default_factory=dict)
    _folded: Any = field(default=None, repr=False)

    @classmethod
    def new(cls, features: FeatureConfig, dim: int, hidden: int, **kw: Any) -> HashedNgramScorer:
        features.validate("scorer")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"scorer: dim must be a positive int, got {dim!r}")
        if not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"scorer: hidden must be a non-negative int (0 = linear), got {hidden!r}")
        pooling = kw.get("pooling", "mean")
        if pooling not in POOLINGS:
            raise ValueError(f"scorer: pooling must be one of {POOLINGS}, got {pooling!r}")
        model = _model_class()(features.n_buckets, dim, hidden, len(features.dense_names))
        return cls(features, model, dim, hidden, **kw)

    @property
    def device(self) -> Any:
        return self.model.bag.weight.device

    @property
    def predicts_reward(self) -> bool:
        """False for a ranking objective: then the output orders a group and has no reward scale."""
        return self.objective not in RANKING

    def to(self, device: Any) -> HashedNgramScorer:
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ forward
    def logits(self, feats: Features) -> Any:
        """The model's raw output (torch, with gradients when training)."""
        import torch

        dev = self.device
        counts = np.diff(feats.offsets)
        weights = np.repeat(pooling_weights(feats.sizes, self.pooling).astype(np.float32), counts)
        return self.model(
            torch.from_numpy(feats.ids).to(dev),
            torch.from_numpy(feats.offsets[:-1]).to(dev),
            torch.from_numpy(feats.dense).to(dev),
            torch.from_numpy(weights).to(dev),
        )

    def output_to_score(self, out: np.ndarray) -> np.ndarray:
        """Raw output -> the score: P(reward = 1) for bce, the reward for mse, the output otherwise."""
        if self.loss == "bce":
            return 1.0 / (1.0 + np.exp(-out))
        if self.loss == "mse":
            return out * self.target_std + self.target_mean
        return out

    def _fold(self) -> tuple[np.ndarray, ...]:
        """Linear head folded into numpy weights: per-bucket weight, dense weights, bias, mean, std.

        Cached until a parameter changes (torch's per-tensor version counters).
        """
        import torch

        m = self.model
        params = [m.bag.weight, m.base.weight, m.base.bias, m.head[0].weight, m.head[0].bias, m.dense_mean, m.dense_std]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                w = m.head[0].weight[0].double().cpu()
                bucket = (m.bag.weight.double().cpu() @ w[: self.dim]).float().numpy()
                dense_w = (m.base.weight[0].double().cpu() + w[self.dim :]).numpy()
                bias = float(m.base.bias.double().cpu()[0] + m.head[0].bias.double().cpu()[0])
                mean = m.dense_mean.double().cpu().numpy()
                std = m.dense_std.double().cpu().numpy()
            self._folded = (key, (bucket, dense_w, bias, mean, std))
        return self._folded[1]

    def raw_output(self, feats: Features) -> np.ndarray:
        """The model's output (float64, one per text), without gradients.

        Linear head: numpy, each text's sum taken over its own n-grams in order, so a text's
        output does not depend on the other texts of the batch. Hidden layer: the torch model.
        """
        if self.hidden:
            import torch

            was_training = self.model.training
            self.model.eval()
            try:
                with torch.inference_mode():
                    return self.logits(feats).double().cpu().numpy()
            finally:
                self.model.train(was_training)
        bucket, dense_w, bias, mean, std = self._fold()
        counts = np.diff(feats.offsets)
        pooled = np.zeros(counts.size)
        some = np.flatnonzero(counts)
        if some.size:  # each text's sum runs over its own n-grams, in order
            pooled[some] = np.add.reduceat(bucket[feats.ids], feats.offsets[some], dtype=np.float64)
        pooled *= pooling_weights(feats.sizes, self.pooling)
        z = (feats.dense.astype(np.float64) - mean) / std
        out = pooled + bias
        for j in range(dense_w.size):  # column by column: no BLAS blocking that depends on the batch
            out += z[:, j] * dense_w[j]
        return out

    def predict(self, texts: Sequence[str], shape: tuple[int, int], groups_per_chunk: int = 256) -> np.ndarray:
        """Scores of ``shape[0]`` groups of ``shape[1]`` texts (row-major), featurised chunk by chunk."""
        n, g = shape
        out = np.empty(n * g)
        step = max(1, int(groups_per_chunk))
        for s in range(0, n, step):
            m = min(step, n - s)
            feats = featurize(texts[s * g : (s + m) * g], (m, g), self.features)
            out[s * g : (s + m) * g] = self.output_to_score(self.raw_output(feats))
        return out

    # ------------------------------------------------------------------ checkpoints
    def to_checkpoint(self) -> dict[str, Any]:
        from gfpo_filters._version import __version__

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
                "dense": list(self.features.dense_names),
            },
            "target": {
                "name": self.target,
                "objective": self.objective,
                "loss": self.loss,
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
            why = (
                " (version 1 scorers used other word hashes and no group features, so their weights "
                "cannot be carried over)"
                if version == 1
                else ""
            )
            raise ScorerCheckpointError(
                f"{where} has format version {version!r}, but this gfpo-filters reads version {FORMAT_VERSION} "
                f"(written by gfpo-filters {ckpt.get('gfpo_filters_version', '?')}){why}; {RETRAIN} "
                "or use the gfpo-filters version that wrote it"
            )
        try:
            feats = FeatureConfig(**ckpt["features"])
            feats.validate(where)
            spec, target, state = ckpt["model"], ckpt["target"], ckpt["state_dict"]
            if spec.get("kind") != "hashed_ngram" or tuple(spec.get("dense", ())) != feats.dense_names:
                raise ValueError(f"model kind {spec.get('kind')!r} with dense features {spec.get('dense')!r}")
            if target["objective"] not in OBJECTIVES:
                raise ValueError(f"objective {target['objective']!r}")
            if target["loss"] not in ("pairwise", "listwise", "bce", "mse"):
                raise ValueError(f"target loss {target['loss']!r}")
            scorer = cls.new(
                feats,
                int(spec["dim"]),
                int(spec["hidden"]),
                objective=str(target["objective"]),
                loss=str(target["loss"]),
                pooling=spec["pooling"],
                target=str(target["name"]),
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
