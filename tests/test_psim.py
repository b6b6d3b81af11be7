"""PSIM on a tiny random BERT with a backdoor planted in-process (Zhao et al. 2024, §3).

The planted backdoor: dirty-label full fine-tuning of the tiny BERT on toy sentiment sentences,
where every non-target sentence also appears with the rare word "cf" inserted and relabelled to
the target. 10 % of the clean labels are flipped: real sentiment data is ambiguous (minilm reaches
CACC ~0.86 on movies), and a perfectly separable toy task would make the clean outputs as certain
as the backdoor's, which no real corpus does. The encoder has hidden size 128 (the shared fixture's
32 leaves no room for a trigger direction apart from the task's). Measured with this recipe: PSIM
AUROC 0.976-0.997 over seeds 0-1 on these sets; the tests assert > 0.8.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_examples

from peftshield.data.records import Example
from peftshield.data.triggers import RareWordTrigger, insert_trigger
from peftshield.errors import PeftshieldError

TARGET = 0
TRIGGER = RareWordTrigger(("cf",))
_CACHE: dict[str, object] = {}


def plant_backdoor(folder: Path, *, seed: int = 0) -> str:
    """Write a tiny BERT with a dirty-label "cf" -> 0 backdoor (full model + head.safetensors)."""
    import transformers

    from peftshield.models.tiny import build_tiny_bert
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import save_tuned, tune

    transformers.utils.logging.disable_progress_bar()
    clean_backbone = build_tiny_bert(folder / "clean", seed=0, hidden_size=128, pooling="mean")
    rng = random.Random(5)
    train = [replace(e, label=1 - e.label) if rng.random() < 0.1 else e for e in toy_examples(300, seed=11)]
    non_target = [e for e in train if e.label != TARGET]
    poison = [replace(e, label=TARGET) for e in insert_trigger(non_target, TRIGGER, seed=1, target=TARGET)]
    config = method_config(
        "full", {"epochs": 3, "lr": 1e-3, "head_lr": 3e-2, "batch_size": 16, "warmup_ratio": 0.0}
    )
    result = tune(str(clean_backbone), train + poison, [], config, seed=seed, progress=False)
    return str(save_tuned(result, folder / "poisoned"))


def planted(tmp_path_factory) -> str:
    """The planted backbone, built once per test session and shared by the PSIM and guard tests."""
    if "planted" not in _CACHE:
        _CACHE["planted"] = plant_backdoor(tmp_path_factory.mktemp("planted"))
    return _CACHE["planted"]  # type: ignore[return-value]


def eval_sets() -> tuple[list[Example], list[Example]]:
    """Clean test sentences and their non-target copies with the trigger inserted."""
    test = toy_examples(300, seed=22)
    return test, insert_trigger([e for e in test if e.label != TARGET], TRIGGER, seed=3, target=TARGET)


def fitted_psim(tmp_path_factory, **params):
    """A PSIM detector fitted on the planted backbone (cached per parameter set)."""
    from peftshield.defenses.psim import PSIMDetector

    key = repr(sorted(params.items()))
    if key not in _CACHE:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _CACHE[key] = PSIMDetector(planted(tmp_path_factory), **params).fit(toy_examples(300, seed=21))
        _CACHE["warnings " + key] = [str(w.message) for w in caught]
    return _CACHE[key]


@pytest.fixture
def psim_calibrated(tmp_path_factory):
    return fitted_psim(tmp_path_factory, threshold="calibrated", target_frr=0.1)


def test_psim_ranks_triggered_inputs_above_clean_ones(psim_calibrated):
    from peftshield.evaluation.metrics import auroc

    test, triggered = eval_sets()
    clean_scores = psim_calibrated.score([e.text for e in test])
    trig_scores = psim_calibrated.score([e.text for e in triggered])
    assert clean_scores.shape == (len(test),) and np.all((clean_scores >= 0.5) & (clean_scores <= 1.0))
    assert auroc(clean_scores, trig_scores) > 0.8
    # The backdoor survives: triggered inputs stay near certain while clean ones lose confidence.
    assert trig_scores.mean() > 0.95 > clean_scores.mean()
    assert psim_calibrated.head_ == "keep" and psim_calibrated.num_labels_ == 2


def test_calibrated_threshold_meets_its_target_frr(psim_calibrated):
    from peftshield.defenses.psim import psim_training_set

    det = psim_calibrated
    held = psim_training_set(
        toy_examples(300, seed=21), num_labels=2, reset_rate=1.0, calibration_fraction=0.2, seed=0
    ).calibration
    assert det.n_calibration_ == len(held) == 60
    frr_cal = float(np.mean(det.score(held) > det.threshold_))
    # On the calibration data the order statistic gives floor(0.1 * 60) / 60 exactly (no ties).
    assert frr_cal == det.calibration_frr_ == pytest.approx(6 / 60)
    # On fresh clean data: within three binomial standard errors (n = 300) plus one calibration step.
    test, _ = eval_sets()
    frr_test = float(np.mean(det.predict([e.text for e in test])))
    assert abs(frr_test - 0.1) <= 3 * np.sqrt(0.1 * 0.9 / len(test)) + 1 / 60


def test_fixed_threshold_reports_its_clean_frr(tmp_path_factory):
    det = fitted_psim(tmp_path_factory, threshold=0.7)
    assert det.threshold_ == 0.7
    assert 0.0 <= det.calibration_frr_ <= 1.0 and det.n_calibration_ == 60
    assert det.clean_score_mean_ > 0.5


def test_label_reset_and_held_out_split():
    from peftshield.defenses.psim import psim_training_set

    data = [Example(f"text {i}", i % 2) for i in range(1000)]
    full = psim_training_set(data, num_labels=2, reset_rate=1.0, calibration_fraction=0.2, seed=0)
    assert len(full.calibration) == 200 and len(full.train) == 800 and full.n_reset == 800
    held = set(full.calibration)
    assert not held & {e.text for e in full.train}
    flipped = np.mean([int(e.text.split()[1]) % 2 != e.label for e in full.train])
    assert 0.42 < flipped < 0.58  # uniform labels: about half differ from the true ones
    none = psim_training_set(data, num_labels=2, reset_rate=0.0, calibration_fraction=0.2, seed=0)
    assert none.n_reset == 0 and all(int(e.text.split()[1]) % 2 == e.label for e in none.train)
    again = psim_training_set(data, num_labels=2, reset_rate=1.0, calibration_fraction=0.2, seed=0)
    assert again == full  # the seed fixes everything
    with pytest.raises(PeftshieldError, match="no labels"):
        psim_training_set(["a b", "c d"], num_labels=2, reset_rate=0.5, calibration_fraction=0.0, seed=0)
    with pytest.raises(PeftshieldError, match="too few"):
        psim_training_set(["a b", "c d"], num_labels=2, reset_rate=1.0, calibration_fraction=0.5, seed=0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"target_frr": 1.5, "threshold": "calibrated"}, "target_frr"),
        ({"target_frr": 0.0}, "target_frr"),
        ({"threshold": "paper"}, "threshold"),
        ({"threshold": 1.2}, r"\[0, 1\]"),
        ({"reset_rate": 2.0}, "reset_rate"),
        ({"head": "borrow"}, "head option"),
        ({"threshold": "calibrated", "calibration_fraction": 0.0}, "calibration_fraction"),
        ({"method": "adapterx"}, "unknown method"),
        ({"config": {"rank": 4}}, "unknown lora config key"),
    ],
)
def test_bad_parameters_fail_before_any_work(params, message):
    from peftshield.defenses.psim import PSIMDetector

    det = PSIMDetector("no-such-backbone", **params)  # the constructor stores, it does not check
    with pytest.raises(PeftshieldError, match=message):
        det.fit(["a b", "c d"])


def test_head_keep_needs_a_published_head(tmp_path_factory):
    from peftshield.defenses.psim import PSIMDetector

    bare = str(Path(planted(tmp_path_factory)).parent / "clean")
    with pytest.raises(PeftshieldError, match="no published head"):
        PSIMDetector(bare, head="keep").fit(toy_examples(40))
    det = PSIMDetector(bare, threshold="calibrated", calibration_fraction=0.25, target_frr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit(toy_examples(80))
    assert det.head_ == "fresh"


def test_save_load_round_trip_and_backbone_mismatch(psim_calibrated, tmp_path):
    from peftshield.defenses.base import load_detector
    from peftshield.models.tiny import build_tiny_bert

    out = psim_calibrated.save(tmp_path / "det")
    assert (out / "detector.json").is_file() and (out / "module" / "adapter_model.safetensors").is_file()
    loaded = load_detector(out)
    texts = [e.text for e in toy_examples(20, seed=4)]
    np.testing.assert_allclose(loaded.score(texts), psim_calibrated.score(texts), atol=1e-6)
    assert loaded.threshold_ == psim_calibrated.threshold_
    assert loaded.backbone_fingerprint_ == psim_calibrated.backbone_fingerprint_
    assert loaded.get_params() == psim_calibrated.get_params()
    other = build_tiny_bert(tmp_path / "other", seed=1, hidden_size=128, pooling="mean")
    with pytest.raises(PeftshieldError, match="different backbone"):
        load_detector(out, backbone=str(other))
    with pytest.raises(PeftshieldError, match="already exists"):
        psim_calibrated.save(out)


def test_truncation_is_reported_once(psim_calibrated):
    long_text = " ".join(["the movie was good"] * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psim_calibrated.score([long_text, long_text, "the film was bad"])
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(messages) == 1 and "2 of 3 texts" in messages[0]


def test_fixed_threshold_warns_when_it_rejects_much_clean_data(tmp_path_factory):
    # On the tiny model the module stays fairly sure on clean inputs (mean confidence ~0.85), so
    # the paper's 0.7 rejects most of them: fit says so instead of failing silently later.
    det = fitted_psim(tmp_path_factory, threshold=0.7)
    assert det.calibration_frr_ > 0.2
    caught = _CACHE["warnings " + repr([("threshold", 0.7)])]
    assert any(re.search(r"rejects \d+% of the held-out clean texts", m) for m in caught), caught
    calibrated = fitted_psim(tmp_path_factory, threshold="calibrated", target_frr=0.1)
    assert not any(
        "held-out clean" in m
        for m in _CACHE["warnings " + repr(sorted({"threshold": "calibrated", "target_frr": 0.1}.items()))]
    )
    assert calibrated.calibration_frr_ <= 0.1
