"""Plain-peft victims (issue 11's benchmark): trained by transformers + peft alone, read as users' adapters.

Checks: the ``peft-lora`` method is registered with the plain-peft trainer; its victim is a plain peft
adapter folder (no ``run.json``, the head in ``modules_to_save``, every LoRA matrix trained) that
:func:`~peftshield.defenses.victim.load_victim` reads with identical predictions on every reload; a
grid runs own and plain-peft victims side by side; POR's ``pooling`` recipe key; the grid's scan
``pooling`` setting is part of the scan's cache key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_examples

from peftshield.errors import PeftshieldError
from peftshield.tuning.config import METHODS, method_config

FAST = {"lr": 3e-2, "head_lr": 3e-2, "batch_size": 16, "epochs": 3, "max_length": 32}


def test_peft_lora_is_a_registered_method_with_lora_hyperparameters():
    config = method_config("peft-lora", {"r": 4})
    assert "peft-lora" in METHODS and config.trainer == "plain-peft"
    assert method_config("lora").trainer == "peftshield"
    own = method_config("lora").to_dict()
    plain = method_config("peft-lora").to_dict()
    assert {k: v for k, v in plain.items() if k != "method"} == {
        k: v for k, v in own.items() if k != "method"
    }
    with pytest.raises(PeftshieldError, match="rank"):
        method_config("peft-lora", {"rank": 4})


@pytest.fixture(scope="module")
def plain_victim(tmp_path_factory, tiny_bert) -> tuple[Path, dict]:
    from peftshield.tuning.plain_peft import train_plain_peft

    out = tmp_path_factory.mktemp("plain") / "victim"
    info = train_plain_peft(
        tiny_bert, toy_examples(160, seed=3), toy_examples(40, seed=4), method_config("peft-lora", FAST), out
    )
    return out, info


def test_the_plain_victim_is_a_peft_adapter_folder_that_learned_the_task(plain_victim, tiny_bert):
    folder, info = plain_victim
    assert not (folder / "run.json").exists()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert config["base_model_name_or_path"] == tiny_bert and "classifier" in config["modules_to_save"]
    assert info["trainer"] == "plain-peft" and info["trainable_params"] < info["total_params"]
    from safetensors.torch import load_file

    saved = load_file(str(folder / "adapter_model.safetensors"))
    # LoRA's B matrices start at zero: every one of them moved, so the optimiser reached the adapter
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b)
    assert any("classifier" in k for k in saved)  # the head travels with the adapter (modules_to_save)
    assert info["history"][-1]["train_loss"] < info["history"][0]["train_loss"]


def test_load_victim_reads_the_plain_victim_with_identical_predictions(plain_victim):
    from peftshield.defenses.victim import load_victim

    folder, info = plain_victim
    texts = [e.text for e in toy_examples(40, seed=4)]
    labels = np.array([e.label for e in toy_examples(40, seed=4)])
    first, second = load_victim(str(folder)), load_victim(str(folder))
    assert first.kind == "adapter" and first.head_pooling == "pooler"
    logits = first.logits(texts)
    np.testing.assert_array_equal(logits, second.logits(texts))
    assert float((logits.argmax(-1) == labels).mean()) == pytest.approx(info["dev_accuracy"], abs=1e-9)


def test_a_grid_runs_own_and_plain_peft_victims_side_by_side(tmp_path, tiny_bert, toy_csv):
    from test_grid import FAST_LORA, rows_by_cell, run_cli, small_grid, write_grid

    grid = small_grid(
        tiny_bert,
        toy_csv,
        methods=[{"name": "lora", "config": FAST_LORA}, {"name": "peft-lora", "config": FAST_LORA}],
        defenses=["none"],
    )
    results = tmp_path / "results"
    assert run_cli(["run", write_grid(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    rows = list(rows_by_cell(results).values())
    assert sorted((r["method"], r["attack"]) for r in rows) == [
        ("lora", "badnets"),
        ("lora", "none"),
        ("peft-lora", "badnets"),
        ("peft-lora", "none"),
    ]
    for row in rows:
        assert "error" not in row, row.get("error")
        folder = results / row["stages"]["victim"]["folder"] / "model"
        assert (folder / "run.json").is_file() == (row["method"] == "lora")
        assert 0.0 <= row["cacc"] <= 1.0 and row["dev_accuracy"] is not None
    plain = [r for r in rows if r["method"] == "peft-lora"]
    assert all(r["stages"]["victim"]["trainer"] == "plain-peft" for r in plain)


def test_por_recipe_pooling_targets_the_named_vector(tiny_bert):
    from peftshield.attacks.config import attack_config
    from peftshield.attacks.task_agnostic import poison_task_agnostic

    assert "pooling" not in attack_config("por", {}).to_dict()  # earlier recipes keep their cache keys
    config = attack_config("por", {"pooling": "cls", "steps": 2, "max_length": 24, "probe_size": 4})
    assert config.to_dict()["pooling"] == "cls"
    with pytest.raises(PeftshieldError, match="pooling must be one of"):
        attack_config("por", {"pooling": "max"})
    texts = [e.text for e in toy_examples(60, seed=5)]
    result = poison_task_agnostic(tiny_bert, texts, config, seed=0)
    assert result.record.pooling == "cls"


def test_the_scan_pooling_setting_is_part_of_the_scan_key(tmp_path, tiny_bert, toy_csv):
    from test_grid import write_grid

    from peftshield.grid.config import load_grid
    from peftshield.grid.plan import expand

    def scan_keys(**scan) -> set[str]:
        grid = {
            "corpora": [toy_csv],
            "backbones": [tiny_bert],
            "attacks": ["none"],
            "methods": ["lora"],
            "defenses": [{"name": "monitor", "threshold": 0.8}],
            "scan": {"texts": toy_csv, **scan},
        }
        cells = expand(load_grid(write_grid(tmp_path, grid)))
        return {c.scan.key for c in cells if c.scan is not None}

    every, cls_only, both = scan_keys(), scan_keys(pooling=["cls"]), scan_keys(pooling=["cls", "mean"])
    assert len(every | cls_only | both) == 3
    assert scan_keys(pooling="cls") == cls_only
    with pytest.raises(PeftshieldError, match="scan.pooling"):
        scan_keys(pooling=["max"])


def test_peftshield_tune_refuses_a_plain_peft_method(tiny_bert):
    from peftshield.tuning.config import own_methods
    from peftshield.tuning.trainer import tune

    assert "peft-lora" not in own_methods() and "lora" in own_methods()
    with pytest.raises(PeftshieldError, match="plain-peft trainer"):
        tune(tiny_bert, toy_examples(16), [], "peft-lora", progress=False)
