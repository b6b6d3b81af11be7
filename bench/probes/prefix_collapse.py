"""Spread of the pooled vector across 64 clean movies dev inputs (issue 13, prefix on POR).

Clean ``minilm`` vs a POR backbone (argv[1]), each without and with a freshly initialised prefix
(the default prefix recipe, seed 0). Usage: python bench/probes/prefix_collapse.py POR_FOLDER
"""

import json
import sys

import numpy as np
import torch

from peftshield.data.corpora import load_splits
from peftshield.models.backbones import load_backbone
from peftshield.models.classifier import PooledClassifier
from peftshield.models.inference import tokenize_batch
from peftshield.tuning.config import config_from_dict
from peftshield.tuning.trainer import build_classifier

dev = load_splits({"corpus": "movies", "split_seed": 0, "max_train": 400, "max_eval": 120}).dev
texts = [e.text for e in dev[:64]]
for name, ref in (("clean", "minilm"), ("por80", sys.argv[1])):
    bb = load_backbone(ref)
    batch = tokenize_batch(bb.tokenizer, texts, 64, "cpu")
    for prefix in (False, True):
        torch.manual_seed(0)
        model = (
            build_classifier(bb, 2, config_from_dict({"method": "prefix"}))
            if prefix
            else PooledClassifier(bb.encoder, 2, bb.pooling)
        )
        model.eval()
        with torch.no_grad():
            pooled = model(**batch)["pooled"].numpy()
        c = pooled - pooled.mean(0)
        print(
            json.dumps(
                {
                    "backbone": name,
                    "prefix": prefix,
                    "norm": round(float(np.linalg.norm(pooled, axis=1).mean()), 3),
                    "spread": round(float(np.linalg.norm(c, axis=1).mean()), 4),
                    "spread_ratio": round(
                        float(np.linalg.norm(c, axis=1).mean() / np.linalg.norm(pooled, axis=1).mean()), 4
                    ),
                }
            ),
            flush=True,
        )
