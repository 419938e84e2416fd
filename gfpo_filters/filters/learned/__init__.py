"""The ``learned`` filter: score completions with a learned model (higher = keep).

The built-in scorer lives in this package: ``features`` (hashed n-grams and group features),
``model`` (the model and its checkpoints), ``training`` and ``report`` (``train_scorer`` and its
validation report), ``cli`` (``gfpo-filters train-scorer``). Importing the filter imports none of
``training``, ``report`` or ``cli`` (nor argparse or tqdm), and torch only when a filter is built.

Three kinds of model (exactly one of ``checkpoint`` / ``model``):

* ``checkpoint="scorer.pt"``: the built-in hashed-n-gram scorer
  (:class:`~gfpo_filters.filters.learned.model.HashedNgramScorer`), trained with
  ``gfpo-filters train-scorer``;
* ``model=<torch.nn.Module>``: your module, called on a :class:`CompletionBatch` (the batch
  contract below), or, with ``tokenizer=...``, called as ``model(input_ids=..., attention_mask=...)``;
* ``model="path/to/dir"``: a local Hugging Face sequence-classification model (a reward model)
  and its tokenizer, loaded with ``local_files_only=True``.

Inference runs over all completions of all groups in chunks of ``batch_size``, under
``torch.inference_mode`` with the model in eval mode, on the model's device. Torch is
imported only when the filter is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gfpo_filters.base import GroupFilter
from gfpo_filters.errors import FilterOutputError, FilterStateError, GroupInputError
from gfpo_filters.groups import Groups, completion_text
from gfpo_filters.hookspecs import hookimpl
from gfpo_filters.params import check_bool, check_choice, check_int

RANK_BY = ("reward", "reward_per_token")
BUILTIN_BATCH = 4096
MODEL_BATCH = 32


@dataclass
class CompletionBatch:
    """What a wrapped ``torch.nn.Module`` (without a tokenizer) receives: ``model(batch)``.

    Attributes (B = number of completions in this chunk, at most ``batch_size``):
        texts: list of B completion texts (message lists reduced to the text of their contents).
        prompts: list of B prompts (the prompt of each completion's group), or None when the
            trainer passed none.
        completion_ids: list of B token-id lists when the trainer passed ``completion_ids``, else None.
        lengths: int64 tensor (B,) on ``device``: token counts when the trainer passed token
            information, else character counts.
        group_index: int64 tensor (B,) on ``device``: the group each completion belongs to.
        index: int64 tensor (B,) on ``device``: the completion's position in its group.
        device: the device of the module's first parameter (CPU for a module without any).

    The module must return B finite scores, higher = keep: a tensor of shape (B,) or (B, 1)
    (or anything ``torch.as_tensor`` turns into one).
    """

    texts: list[str]
    prompts: list[Any] | None
    completion_ids: list[list[int]] | None
    lengths: Any
    group_index: Any
    index: Any
    device: Any

    def __len__(self) -> int:
        return len(self.texts)


def _module_device(module: Any) -> Any:
    import torch

    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


class LearnedFilter(GroupFilter):
    """Keep the completions a learned model scores highest.

    Parameters
        checkpoint: path of a built-in scorer checkpoint (``gfpo-filters train-scorer``).
        model: a ``torch.nn.Module`` (see :class:`CompletionBatch`), or the path of a local
            Hugging Face sequence-classification model directory (with its tokenizer files).
        tokenizer: for a module: tokenise the texts with it and call
            ``model(input_ids=..., attention_mask=...)``; for a checkpoint: only used to count
            tokens for ``rank_by="reward_per_token"`` when the trainer passes no token information.
        rank_by: ``"reward"`` (the model's output) or ``"reward_per_token"`` (output / length,
            see docs/filters/learned.md for outputs <= 0).
        batch_size: completions per forward pass (default 4096 for the built-in scorer, in whole
            groups, 32 otherwise).
        max_length: truncate tokenised inputs to this many tokens (default: the smaller of the
            tokenizer's ``model_max_length`` and the model's ``max_position_embeddings``).
        device: where to load a checkpoint or a model directory (default: CUDA if available,
            else CPU). A module passed as ``model`` stays where it is.
        label: for a classifier with several outputs, the index of the output to use (its
            log-probability is the score); a single-output model needs none.
        include_prompt: tokenise (prompt, completion) pairs instead of completions alone
            (tokenizer models only; the trainer must pass prompts).
    """

    name = "learned"
    description = (
        "Keep what a learned model scores highest: built-in n-gram scorer, a torch module or a local HF reward model."
    )

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model: Any = None,
        tokenizer: Any = None,
        rank_by: str = "reward",
        batch_size: int | None = None,
        max_length: int | None = None,
        device: Any = None,
        label: int | None = None,
        include_prompt: bool = False,
    ) -> None:
        self.checkpoint, self.model, self.tokenizer = checkpoint, model, tokenizer
        self.device = device
        self.rank_by = check_choice(self, "rank_by", rank_by, RANK_BY)
        self.batch_size = check_int(self, "batch_size", batch_size, low=1, optional=True)
        self.max_length = check_int(self, "max_length", max_length, low=1, optional=True)
        self.label = check_int(self, "label", label, low=0, optional=True)
        self.include_prompt = check_bool(self, "include_prompt", include_prompt)
        if (checkpoint is None) == (model is None):
            raise self.param_error(
                "checkpoint" if checkpoint is None else "model",
                "give exactly one of checkpoint='scorer.pt' (built-in scorer) or model=... "
                "(a torch.nn.Module or a local Hugging Face model directory)",
            )
        import torch

        self._torch = torch
        self._scorer = None
        self._module = None
        self._hf_tokenizer = None
        if checkpoint is not None:
            from gfpo_filters.filters.learned.model import HashedNgramScorer

            if tokenizer is not None and not callable(tokenizer) and not hasattr(tokenizer, "encode_batch"):
                raise self.param_error("tokenizer", f"cannot count tokens with a {type(tokenizer).__name__}")
            self._scorer = HashedNgramScorer.load(checkpoint, device=self._default_device(device))
            self._kind = "builtin"
            if rank_by == "reward_per_token" and not self._scorer.predicts_reward:
                raise self.param_error(
                    "rank_by",
                    f"'reward_per_token' divides a predicted reward by the length, but {str(checkpoint)!r} was "
                    f"trained with objective {self._scorer.objective!r}: its output only orders a group. "
                    "Train with --objective pointwise for a reward, or use rank_by='reward'",
                )
        elif isinstance(model, (str, Path)):
            self._module, self._hf_tokenizer = self._load_hf_directory(Path(model), tokenizer, device)
            self._kind = "tokenized"
        elif isinstance(model, torch.nn.Module):
            if device is not None:
                raise self.param_error(
                    "device", "a module passed as model stays on its own device; move it with model.to(...) instead"
                )
            self._module = model
            self._hf_tokenizer = tokenizer
            self._kind = "tokenized" if tokenizer is not None else "module"
        else:
            raise self.param_error(
                "model", f"must be a torch.nn.Module or the path of a model directory, got {type(model).__name__}"
            )
        if include_prompt and self._kind != "tokenized":
            raise self.param_error(
                "include_prompt", "needs a model with a tokenizer (a model directory or tokenizer=...)"
            )
        if self._kind == "tokenized" and not callable(self._hf_tokenizer):
            raise self.param_error("tokenizer", "must be a Hugging Face tokenizer (callable, returning input_ids)")

    # ------------------------------------------------------------------ construction helpers
    def _default_device(self, device: Any) -> Any:
        torch = self._torch
        if device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise self.param_error("device", f"{device!r} is not a torch device ({e})") from None

    def _load_hf_directory(self, path: Path, tokenizer: Any, device: Any) -> tuple[Any, Any]:
        if not path.is_dir():
            raise self.param_error("model", f"model directory {str(path)!r} does not exist or is not a directory")
        if not (path / "config.json").is_file():
            raise self.param_error("model", f"model directory {str(path)!r} has no config.json")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            module = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise self.param_error(
                "model", f"could not load a sequence-classification model from {str(path)!r}: {e}"
            ) from None
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                raise self.param_error(
                    "model", f"could not load the tokenizer of {str(path)!r} (pass tokenizer=...): {e}"
                ) from None
        module.to(self._default_device(device))
        module.eval()
        return module, tokenizer

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """What identifies the model: where it came from and a fingerprint of its weights (and scorer settings).

        The filter has no state that changes; this lets a resumed run check that it scores with the
        same model as the run it resumes (:meth:`load_state_dict`).
        """
        return {"model": self._model_label(), "fingerprint": self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        saved = state.get("fingerprint") if isinstance(state, dict) else None
        if saved != self._fingerprint():
            label = state.get("model") if isinstance(state, dict) else None
            raise FilterStateError(
                f"filter 'learned': the checkpoint was saved with model {label!r} (fingerprint {str(saved)[:12]}), "
                f"but this run scores with {self._model_label()!r} (fingerprint {self._fingerprint()[:12]}): "
                "the resumed run would keep other rows. Resume with the same model, or start a new run"
            )

    def _model_label(self) -> str:
        if self._kind == "builtin":
            return f"checkpoint {str(self.checkpoint)}"
        if isinstance(self.model, (str, Path)):
            return f"model directory {str(self.model)}"
        return f"module {type(self._module).__qualname__}"

    def _fingerprint(self) -> str:
        """sha256 of the weights (every tensor of the state dict, with its name, dtype and shape); computed once."""
        cached = getattr(self, "_fingerprint_value", None)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        if self._kind == "builtin":
            settings = {k: v for k, v in self._scorer.to_checkpoint().items() if k not in ("state_dict", "training")}
            settings.pop("gfpo_filters_version", None)
            digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
            module = self._scorer.model
        else:
            module = self._module
        for name, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(self._torch.uint8).numpy().tobytes())
        self._fingerprint_value = digest.hexdigest()
        return self._fingerprint_value

    # ------------------------------------------------------------------ scoring
    def score(self, groups: Groups) -> np.ndarray:
        if self._kind == "builtin":
            per_chunk = max(1, (self.batch_size or BUILTIN_BATCH) // max(groups.group_size, 1))
            pred = self._scorer.predict(groups.flat_texts(), groups.shape, per_chunk)
        else:
            pred = self._predict_module(groups)
        pred = pred.reshape(groups.shape)
        if self.rank_by == "reward":
            return pred
        tok = self.tokenizer if self._kind == "builtin" else self._hf_tokenizer
        lengths = np.maximum(groups.get_lengths(tok), 1).astype(np.float64)
        # pred / length where pred > 0; otherwise below every positive one, higher pred first,
        # squeezed into (-2, -1]
        with np.errstate(invalid="ignore"):
            return np.where(pred > 0, pred / lengths, -1.0 + np.arctan(pred) * (2.0 / np.pi))

    def _predict_module(self, groups: Groups) -> np.ndarray:
        torch = self._torch
        module = self._module
        n, g = groups.shape
        texts = groups.flat_texts()
        total = len(texts)
        out = np.empty(total)
        batch = self.batch_size or MODEL_BATCH
        device = _module_device(module)
        was_training = module.training
        module.eval()
        try:
            with torch.inference_mode():
                if self._kind == "module":
                    self._run_module(groups, texts, out, batch, device)
                else:
                    self._run_tokenized(groups, texts, out, batch, device)
        finally:
            module.train(was_training)
        return out

    def _check_output(self, raw: Any, b: int, first: int, g: int) -> Any:
        torch = self._torch
        if hasattr(raw, "logits"):
            raw = raw.logits
        try:
            t = torch.as_tensor(raw)
        except (TypeError, ValueError, RuntimeError) as e:
            raise FilterOutputError(
                f"filter 'learned': the model returned {type(raw).__name__}, not scores ({e})"
            ) from None
        if t.dim() == 2 and t.shape[1] > 1 and self._kind == "tokenized":
            if self.label is None:
                names = getattr(getattr(self._module, "config", None), "id2label", None)
                raise FilterOutputError(
                    f"filter 'learned': the model has {t.shape[1]} outputs per completion"
                    + (f" (labels {names})" if names else "")
                    + "; pass label=<index> to score by the log-probability of that label"
                )
            if self.label >= t.shape[1]:
                raise FilterOutputError(
                    f"filter 'learned': label={self.label} but the model has only {t.shape[1]} outputs"
                )
            t = torch.log_softmax(t.float(), dim=1)[:, self.label]
        if t.dim() == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.shape != (b,):
            i = first // g
            raise FilterOutputError(
                f"filter 'learned': the model returned shape {tuple(t.shape)} for a chunk of {b} completions "
                f"(starting at group {i}, completion {first % g}); "
                f"expected ({b},) or ({b}, 1): one score per completion"
            )
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
            raise FilterOutputError(f"filter 'learned': the model returned scores of dtype {t.dtype}, not numbers")
        return t.double().cpu().numpy()

    def _run_module(self, groups: Groups, texts: list[str], out: np.ndarray, batch: int, device: Any) -> None:
        torch = self._torch
        n, g = groups.shape
        lengths = groups.lengths.reshape(-1)
        prompts = None if groups.prompts is None else [groups.prompts[i // g] for i in range(n * g)]
        ids = None
        if groups.completion_ids is not None:
            ids = [list(x) for grp in groups.completion_ids for x in grp]
        flat = np.arange(n * g)
        for s in range(0, n * g, batch):
            sl = slice(s, min(s + batch, n * g))
            b = sl.stop - sl.start
            cb = CompletionBatch(
                texts=texts[sl],
                prompts=None if prompts is None else prompts[sl],
                completion_ids=None if ids is None else ids[sl],
                lengths=torch.as_tensor(lengths[sl], dtype=torch.int64, device=device),
                group_index=torch.as_tensor(flat[sl] // g, dtype=torch.int64, device=device),
                index=torch.as_tensor(flat[sl] % g, dtype=torch.int64, device=device),
                device=device,
            )
            out[sl] = self._check_output(self._module(cb), b, s, g)

    def _max_length(self) -> int | None:
        if self.max_length is not None:
            return int(self.max_length)
        limits = []
        tml = getattr(self._hf_tokenizer, "model_max_length", None)
        if isinstance(tml, int) and tml < 10**6:
            limits.append(tml)
        mpe = getattr(getattr(self._module, "config", None), "max_position_embeddings", None)
        if isinstance(mpe, int):
            limits.append(mpe)
        return min(limits) if limits else None

    def _run_tokenized(self, groups: Groups, texts: list[str], out: np.ndarray, batch: int, device: Any) -> None:
        tok = self._hf_tokenizer
        n, g = groups.shape
        if self.include_prompt:
            if groups.prompts is None:
                raise GroupInputError("filter 'learned': include_prompt=True needs the trainer to pass prompts")
            prompt_texts = [
                p if isinstance(p, str) else completion_text(p, f"prompt of group {i}")
                for i, p in enumerate(groups.prompts)
            ]
            firsts = [prompt_texts[i // g] for i in range(n * g)]
        max_length = self._max_length()
        kwargs = {"truncation": max_length is not None, "max_length": max_length, "return_tensors": "pt"}
        if len(texts) > 1 and batch > 1:
            if getattr(tok, "pad_token", None) is None:
                raise GroupInputError(
                    "filter 'learned': the tokenizer has no pad token, so completions cannot share a batch; "
                    "set tokenizer.pad_token (e.g. to its eos_token) or use batch_size=1"
                )
            kwargs["padding"] = True
        # Chunks of similar character length pad little; the order is fixed by the input alone.
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        if self.include_prompt:
            sizes += np.fromiter(map(len, firsts), dtype=np.int64, count=len(firsts))
        order = np.argsort(-sizes, kind="stable")
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            chunk = [texts[i] for i in idx]
            enc = tok([firsts[i] for i in idx], chunk, **kwargs) if self.include_prompt else tok(chunk, **kwargs)
            inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            out[idx] = self._check_output(self._module(**inputs), idx.size, int(idx[0]), g)


@hookimpl
def register_filters():
    return [LearnedFilter]
