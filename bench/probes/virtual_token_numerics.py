"""Does a victim's training depend on the CPU's vector instruction set? (issue 16, reproduction gap)

The retention re-run reproduced LoRA and full fine-tuning to the digit but not prompt, P-tuning
and prefix tuning, at the same seed, code path, library versions and thread count. What differed
was the machine. This probe trains the same small victim (clean minilm, 400 ``movies`` training
texts, 200 dev texts, 3 epochs, seed 0, one torch thread) with each method once per numeric
variant, each in its own process, and compares the dev logits of the variants:

- ``default``: this CPU's best kernels (``torch.backends.cpu.get_cpu_capability()``);
- ``aten-avx2``: ATen's own vectorised kernels limited to AVX2 (``ATEN_CPU_CAPABILITY=avx2``);
- ``avx2``: that, and MKL's matrix products limited to AVX2 too (``MKL_ENABLE_INSTRUCTIONS=AVX2``),
  roughly what a machine without AVX-512 computes.

Each variant is deterministic on its own (the first is also run twice). A method whose victims
differ between variants amplifies float rounding; one whose victims agree does not.

Usage: python bench/probes/virtual_token_numerics.py OUT.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {
    "default": {},
    "default-again": {},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
METHODS = ("lora", "full", "prefix", "prompt", "ptuning")
SIZES = {"corpus": "movies", "split_seed": 0, "max_train": 400, "max_eval": 200}


def child(method: str, out: str) -> None:
    """Train one victim and save its dev logits (runs in a fresh process per variant)."""
    import torch

    from peftshield.data.corpora import load_splits
    from peftshield.models.inference import predict_outputs
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import tune

    torch.set_num_threads(1)
    splits = load_splits(SIZES)
    config = method_config(method, {"epochs": 3})
    result = tune("minilm", splits.train, splits.dev, config, seed=0, device="cpu", progress=False)
    texts = [e.text for e in splits.dev]
    logits, _ = predict_outputs(result.model, result.tokenizer, texts, max_length=config.max_length)
    np.save(out, logits)
    print(
        json.dumps(
            {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "dev_accuracy": result.best_dev_accuracy,
            }
        )
    )


def main(path: str) -> None:
    """Run every method under every variant and write the comparison to ``path``."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            logits = {}
            info = {}
            for name, env in VARIANTS.items():
                out = str(Path(tmp) / f"{method}-{name}.npy")
                done = subprocess.run(
                    [sys.executable, __file__, "--child", method, out],
                    env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                info[name] = json.loads(done.stdout.strip().splitlines()[-1])
                logits[name] = np.load(out)
            base = logits["default"]
            row = {"method": method, "variants": {}}
            for name, values in logits.items():
                row["variants"][name] = {
                    **info[name],
                    "max_abs_logit_diff_vs_default": float(np.abs(values - base).max()),
                    "prediction_flips_vs_default": int((values.argmax(1) != base.argmax(1)).sum()),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(path).write_text(json.dumps({"sizes": SIZES, "epochs": 3, "n_dev": 200, "rows": rows}, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1])
