"""Cost of one SmolLM2 training step against one minilm step, on the same batch (issue 14, item 5).

One LoRA step (forward, backward, AdamW step) on the same 32 ``movies`` training texts at
``max_length`` 64, after one warm-up step; the median of ``--steps`` timed steps per cell. Cells:
minilm (its mean-pooled linear head), smollm2 with a last-token linear head, smollm2 prompt-based
(template ``Review: {text}\\nSentiment:``, verbalizer `` negative`` / `` positive``). The ratio
smollm2 / minilm sizes the decoder grid (``bench/grids/decoder.json``; bench/README.md).

A micro-benchmark, not an experiment, so it stays outside the grid (issue 16): it times single
optimiser steps on one fixed batch, below the grid's smallest unit (a whole tuned victim), and
measures no accuracy, attack or defence.

Run: ``python bench/bench_decoder_step.py`` (results in ``bench/results/decoder_step.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ResultFile  # noqa: E402

from peftshield.data.corpora import load_splits  # noqa: E402
from peftshield.models.backbones import load_backbone  # noqa: E402
from peftshield.models.inference import tokenize_batch  # noqa: E402
from peftshield.models.templates import DEFAULT_TEMPLATE, DEFAULT_VERBALIZER, templated  # noqa: E402
from peftshield.tuning.config import method_config  # noqa: E402
from peftshield.tuning.trainer import build_classifier  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "decoder_step.json"
CELLS = {
    "minilm": ("minilm", {}),
    "smollm2-last": ("smollm2", {}),
    "smollm2-verbalizer": ("smollm2", {"template": DEFAULT_TEMPLATE, "verbalizer": list(DEFAULT_VERBALIZER)}),
}


def step_cell(name: str, texts: list[str], labels: list[int], steps: int, method: str) -> dict:
    """Median seconds of one training step of ``method`` for cell ``name`` on the given batch."""
    ref, extra = CELLS[name]
    backbone = load_backbone(ref)
    config = method_config(method, {"max_length": 64, **extra})
    torch.manual_seed(0)
    model = build_classifier(backbone, 2, config)
    tokenizer = templated(backbone.tokenizer, config.template)
    batch = tokenize_batch(tokenizer, texts, config.max_length, "cpu")
    target = torch.tensor(labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    model.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = model(**batch, labels=target)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return {
        "backbone": ref,
        "seconds_per_step": float(np.median(times)),
        "steps_timed": steps,
        "batch_tokens": int(batch["attention_mask"].sum()),
        "batch_width": int(batch["input_ids"].shape[1]),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    command = "python bench/bench_decoder_step.py " + " ".join(sys.argv[1:])
    results = ResultFile(RESULT, "decoder_step", command, fresh=args.fresh)
    splits = load_splits({"corpus": "movies", "split_seed": 0, "max_train": 32})
    texts, labels = [e.text for e in splits.train[:32]], [e.label for e in splits.train[:32]]
    for name in CELLS:
        key = {"cell": name, "method": args.method, "batch_size": len(texts)}
        results.run_cell(key, lambda n=name: step_cell(n, texts, labels, args.steps, args.method))
    rows = {r["cell"]: r for r in results.rows if "error" not in r and r.get("method") == args.method}
    summary = {}
    if "minilm" in rows:
        base = rows["minilm"]["seconds_per_step"]
        for name, row in rows.items():
            summary[f"{name}_seconds"] = round(row["seconds_per_step"], 3)
            summary[f"{name}_vs_minilm"] = round(row["seconds_per_step"] / base, 2)
    results.finish(summary)
    print(summary)


if __name__ == "__main__":
    main()
