"""Why does the prefix victim of the 80-step POR backbone sit at chance? Dev-split probe.

Usage: python bench/probes/prefix_por_tuning.py POR_FOLDER [variant ...]
Each variant: name=lr:head_lr:seed:epochs
"""

import json
import sys
import time

import numpy as np
import torch

from peftshield.data.corpora import load_splits
from peftshield.models.backbones import load_backbone
from peftshield.models.inference import tokenize_batch
from peftshield.tuning.config import config_from_dict
from peftshield.tuning.trainer import build_classifier, tune

folder = sys.argv[1]
splits = load_splits({"corpus": "movies", "split_seed": 0, "max_train": 400, "max_eval": 120})
dev = splits.dev
print("dev", len(dev), "train", len(splits.train), flush=True)


def pooled_stats(backbone, method_cfg, seed=0):
    torch.manual_seed(seed)
    model = build_classifier(backbone, 2, method_cfg, head="fresh")
    model.eval()
    texts = [e.text for e in dev[:64]]
    with torch.no_grad():
        batch = tokenize_batch(backbone.tokenizer, texts, 64, "cpu")
        out = model(**batch)
    pooled = out["pooled"] if isinstance(out, dict) else out.pooled
    logits = out["logits"]
    return pooled.numpy(), logits.numpy()


def sign_match(pooled, pvs):
    s = np.sign(pooled)[:, None, :] == np.sign(pvs)[None, :, :]
    return s.mean(-1).max(-1)


variants = sys.argv[2:] or ["default=0.005:0.003:0:3"]
backbone = load_backbone(folder)
from safetensors.numpy import load_file  # noqa: E402

try:
    pvs = load_file(f"{folder}/pvs.safetensors")["pvs"]
except Exception:
    pvs = None
base_cfg = {"method": "prefix"}
cfg = config_from_dict(base_cfg)
pooled, logits = pooled_stats(backbone, cfg)
info = {
    "pooled_norm": float(np.linalg.norm(pooled, axis=1).mean()),
    "pooled_std_across_inputs": float(pooled.std(0).mean()),
}
if pvs is not None:
    info["init_sign_match_mean"] = float(sign_match(pooled, pvs).mean())
    info["init_fire_rate"] = float((sign_match(pooled, pvs) > 0.8).mean())
print("prefix at init:", json.dumps(info), flush=True)
for v in variants:
    name, spec = v.split("=")
    lr, head_lr, seed, epochs = spec.split(":")
    c = config_from_dict(
        {"method": "prefix", "lr": float(lr), "head_lr": float(head_lr), "epochs": int(epochs)}
    )
    t0 = time.time()
    res = tune(backbone, splits.train, dev, c, seed=int(seed), progress=False)
    hist = [(h["epoch"], round(h["train_loss"], 3), round(h["dev_accuracy"], 3)) for h in res.history]
    print(name, "best dev", round(res.best_dev_accuracy, 3), hist, f"{time.time() - t0:.0f}s", flush=True)
