"""Demo PSIM rows: FRR at the 5% calibrated threshold vs calibration size, measured on the DEV split.

Usage: python bench/probes/demo_psim_calibration.py POISON_FOLDER n_train:cal_fraction ...
"""

import json
import sys
import time

import numpy as np

from peftshield.attacks.record import read_poison_record
from peftshield.data.corpora import load_splits
from peftshield.defenses.psim import PSIMDetector
from peftshield.evaluation import metrics as m
from peftshield.evaluation.defended import triggered_examples

folder = sys.argv[1]
record = read_poison_record(folder)
dev = load_splits({"corpus": "movies", "split_seed": 0, "max_train": 400, "max_eval": 500}).dev
for spec in sys.argv[2:]:
    n, frac = spec.split(":")
    train = load_splits({"corpus": "movies", "split_seed": 0, "max_train": int(n), "max_eval": 120}).train
    det = PSIMDetector(
        backbone=folder, threshold="calibrated", target_frr=0.05, calibration_fraction=float(frac), seed=0
    )
    t0 = time.time()
    det.fit(list(train), progress=False)
    fit_s = time.time() - t0
    s_c = det.score([e.text for e in dev])
    trig = triggered_examples(dev, record.trigger_objects()[0], record.target, seed=0)
    s_t = det.score([e.text for e in trig])
    frr = float((s_c > det.threshold_).mean())
    far = float((s_t <= det.threshold_).mean())
    out = {
        "n_train": int(n),
        "cal_fraction": float(frac),
        "n_cal": det.n_calibration_,
        "threshold": round(float(det.threshold_), 4),
        "dev_frr": round(frr, 3),
        "dev_frr_first120": round(float((s_c[:120] > det.threshold_).mean()), 3),
        "dev_far": round(far, 3),
        "dev_auroc": round(m.auroc(s_c, s_t), 4),
        "clean_mean": round(float(np.mean(s_c)), 3),
        "fit_s": round(fit_s, 1),
    }
    print(json.dumps(out), flush=True)
