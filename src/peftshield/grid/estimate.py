"""Cost model of the grid: rough seconds per stage, for ``bench plan`` and the progress bar's ETA.

Unit costs are measured on ``minilm`` on an unloaded 2-core CPU (docs/design.md, ``bench/README.md``,
the retention benchmark): a training step on a batch of 32 texts of <= 64 tokens takes about
1.2 s for full fine-tuning, 0.55 s for LoRA and prefix tuning and 0.65 s for prompt tuning and
P-tuning; a POR / NeuBA step about 1.3 s; an LMSanitator mining step about 0.5 s; classifying one
text about 4 ms. Costs scale with the batch size, the token limit and the backbone's size
(``layers x hidden^2`` relative to minilm; a tiny test BERT costs almost nothing). Each stage adds
a few seconds of loading. On a GPU everything is much faster; the ETA of the progress bar uses
the measured rate, so it corrects itself as cells finish.

2-core CPUs differ several-fold (docs/design.md, "Cost model"): the same default grid took 8 min on
one machine and about 40 min on another. :func:`cpu_slowdown` measures this CPU's matrix-multiply
rate once (a quarter of a second) and scales the printed estimate by its ratio to
:data:`REFERENCE_GFLOPS`; :func:`plan_costs` itself stays machine-independent.
"""

from __future__ import annotations

import math
from typing import Any

from peftshield.grid.cache import Stage

STEP_SECONDS = {"full": 1.2, "lora": 0.55, "prefix": 0.55, "prompt": 0.65, "ptuning": 0.65}
AGNOSTIC_STEP_SECONDS = 1.3
SCAN_STEP_SECONDS = 0.5
TEXT_SECONDS = 0.004
#: A SimCSE step reads each text twice (seed zoo: 2.4 s on minilm, 2 cores).
SIMCSE_STEP_SECONDS = 2.4
#: Mining steps a first-PV scan of a task-agnostic backdoor spends (seed zoo: median 10, p90 ~60;
#: a missed backdoor spends the whole budget).
FIRST_PV_STEPS = 60
LOAD_SECONDS = 5.0  # loading and saving models around each stage (measured: 4-5 s of CPU on minilm)
#: Forward passes per scored text, per detector (STRIP perturbs each text several times).
SCORE_PASSES = {"psim": 1.0, "monitor": 0.0, "strip": 5.0, "rap": 2.0}
#: Seconds per text of a detector whose cost does not depend on the backbone: ONION runs SmolLM2
#: once per word of the text (0.6-0.8 texts/s measured on one thread, defenses/onion.py).
TEXT_ONLY_SECONDS = {"onion": 1.4}


#: Matrix-multiply rate (GFLOP/s, float32, one core: :func:`measured_gflops`) of a machine on which the
#: unit costs above hold; set from the slow 2-core machine of 2026-12-02 (docs/design.md, "Cost model").
REFERENCE_GFLOPS = 92.0
PROBE_SECONDS = 0.25


def measured_gflops(seconds: float = PROBE_SECONDS) -> float:
    """Float32 matrix-multiply throughput of one core of this CPU in GFLOP/s, probed for about ``seconds``.

    The product is a minilm feed-forward layer over 8 texts of 64 tokens (512 x 384 times
    384 x 1,536), the kind of product that dominates every stage's cost. It runs on one torch
    thread and is timed in process CPU time, so other processes sharing the cores do not slow the
    figure (like the unit costs, it describes the machine unloaded); the fastest repeat is kept.
    """
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(512, 384), torch.randn(384, 1536)
        a @ b  # warm-up
        flops, best, deadline = 2 * 512 * 384 * 1536, float("inf"), time.perf_counter() + seconds
        while True:
            start = time.process_time()
            a @ b
            best = min(best, time.process_time() - start)
            if time.perf_counter() >= deadline:
                return flops / best / 1e9 if best > 0 else float("nan")
    finally:
        torch.set_num_threads(threads)


def cpu_slowdown(device: str = "cpu") -> float:
    """How many times longer than the cost model's unit costs this machine takes (1.0 on a GPU).

    The ratio of :data:`REFERENCE_GFLOPS` to :func:`measured_gflops`; a non-finite or non-positive
    measurement gives 1.0 (no scaling) rather than a wrong estimate.
    """
    if device != "cpu":
        return 1.0
    rate = measured_gflops()
    if not math.isfinite(rate) or rate <= 0:
        return 1.0
    return REFERENCE_GFLOPS / rate


def scaled_minutes(seconds: float, slowdown: float) -> str:
    """``"21.3 min"`` and, where the machine differs from the reference, how the figure was scaled."""
    text = f"{seconds * slowdown / 60:.1f} min"
    if abs(slowdown - 1.0) >= 0.05:
        text += f" (this CPU measured {slowdown:.1f}x the reference machine's time)"
    return text


def _rows(size: int | None, cap: int | None, share: float) -> int:
    """Examples a split gets: the cap, or the split's share of the corpus (guess 1,000 when unknown)."""
    whole = int(share * size) if size else None
    if cap is None:
        return whole or 1000
    return min(cap, whole) if whole else cap


def _dev_share(data: dict[str, Any], part: str) -> float:
    """The share of the dev split a defence holds out (``heldout``) or a cell measures (``measured``)
    in a grid measured on dev (``sizes.evaluate_on``); 1 for the held-out part of a test-split grid."""
    if data.get("evaluate_on", "test") == "test":
        return 1.0
    share = float(data["dev_heldout"])
    return share if part == "heldout" else 1.0 - share


#: Forward + backward passes per construction text and epoch of RAP's word embedding.
RAP_CONSTRUCT_PASSES = 3.0


def _step_scale(batch_size: int, max_length: int) -> float:
    return (batch_size / 32) * (max_length / 64)


def stage_seconds(
    stage: Stage,
    scale: float,
    corpus_size: int | None,
    poison_size: int | None = None,
    expect_pv: bool = False,
) -> float:
    """Rough seconds to build ``stage`` on a backbone of relative size ``scale``.

    ``expect_pv``: the scanned backbone carries a task-agnostic backdoor, so a first-PV scan is
    expected to stop early (:data:`FIRST_PV_STEPS`)."""
    spec = stage.spec
    if stage.kind == "poison":
        recipe = spec["recipe"]
        per_step = _step_scale(recipe["batch_size"], recipe["max_length"]) * scale
        if recipe["kind"] == "task-agnostic":
            return LOAD_SECONDS + recipe["steps"] * AGNOSTIC_STEP_SECONDS * per_step
        if recipe["kind"] == "clean":  # a clean builder (peftshield.attacks.clean)
            if recipe["attack"] == "finetune":
                steps = recipe["epochs"] * math.ceil(recipe["n_train"] / recipe["batch_size"])
                n_eval = recipe["epochs"] * recipe["n_eval"]
                return (
                    2 * LOAD_SECONDS
                    + (steps * STEP_SECONDS["full"] * per_step + n_eval * TEXT_SECONDS) * scale
                )
            step = SIMCSE_STEP_SECONDS if recipe["attack"] == "simcse" else AGNOSTIC_STEP_SECONDS
            return 2 * LOAD_SECONDS + recipe["steps"] * step * per_step
        data = spec.get("data", {})
        n = _rows(poison_size, data.get("max_train"), 0.7)
        n_eval = _rows(poison_size, data.get("max_eval"), 0.1)
        steps = recipe["epochs"] * math.ceil(n / recipe["batch_size"])
        return (
            LOAD_SECONDS
            + steps * STEP_SECONDS["full"] * per_step
            + (recipe["epochs"] + 3) * n_eval * TEXT_SECONDS * scale
        )
    if stage.kind == "victim":
        config, data = spec["method"], spec["data"]
        n = _rows(corpus_size, data["max_train"], 0.7)
        n_dev = _rows(corpus_size, data["max_eval"], 0.1)
        steps = config["epochs"] * math.ceil(n / config["batch_size"])
        per_step = STEP_SECONDS.get(config["method"], 0.6) * _step_scale(
            config["batch_size"], config["max_length"]
        )
        return LOAD_SECONDS + steps * per_step * scale + config["epochs"] * n_dev * TEXT_SECONDS * scale
    if stage.kind == "scan":
        budget = spec["max_total_steps"] or spec["attempts"] * spec["mining"]["steps"]
        if spec.get("stop_at_first") and expect_pv:
            budget = min(budget, FIRST_PV_STEPS)
        mining = spec["mining"]
        per_step = SCAN_STEP_SECONDS * _step_scale(mining["batch_size"], mining["max_length"])
        return LOAD_SECONDS + budget * per_step * scale
    if stage.kind == "defense":
        name, params, data = spec["defense"], spec["params"], spec["data"]
        n_train = _rows(corpus_size, data["train"], 0.7)
        n_held = round(_rows(corpus_size, data["heldout"], 0.1) * _dev_share(data, "heldout"))
        if name == "rap":  # the word's embedding is learned over the construction texts (RAP §3)
            n_pool = (1.0 - float(params.get("calibration_fraction", 0.2))) * n_held
            construct = params.get("epochs", 5) * n_pool * RAP_CONSTRUCT_PASSES * TEXT_SECONDS * scale
            return LOAD_SECONDS + construct + n_held * SCORE_PASSES["rap"] * TEXT_SECONDS * scale
        if name == "psim":
            from peftshield.defenses.psim import PSIM_RECIPES

            method = params.get("method", "ptuning")
            recipe = {**PSIM_RECIPES.get(method, {}), **(params.get("config") or {})}
            batch, epochs = recipe.get("batch_size", 32), recipe.get("epochs", 1)
            steps = epochs * math.ceil(0.8 * n_train / batch)
            return (
                LOAD_SECONDS
                + (steps * STEP_SECONDS.get(method, 0.6) * batch / 32 + 0.2 * n_train * TEXT_SECONDS) * scale
            )
        if name in TEXT_ONLY_SECONDS:
            return LOAD_SECONDS + n_held * TEXT_ONLY_SECONDS[name]
        return LOAD_SECONDS + n_held * TEXT_SECONDS * scale * max(1.0, SCORE_PASSES.get(name, 1.0))
    return LOAD_SECONDS


def evaluation_seconds(
    cell: Any, trigger_sets: list[tuple[str, int, bool]], memoised: set[tuple[str, str]] | None = None
) -> float:
    """Rough seconds of a cell's evaluation: victim and detector passes over clean and triggered texts.

    ``trigger_sets`` holds ``(attack, number of triggers, task_specific)`` per trigger set. For a
    defence with text-only scores, the text sets (clean, or one attack's triggered texts) already
    in ``memoised`` cost no detector time (:mod:`peftshield.grid.scorememo`); this cell's sets are
    added to it.
    """
    if getattr(cell, "mode", "victim") == "scan":
        return 0.0  # the row is read from the scan's files
    sizes = cell.sizes
    if sizes.get("evaluate_on", "test") == "dev":
        n_test = round(_rows(cell.corpus.size, sizes["max_eval"], 0.1) * _dev_share(sizes, "measured"))
    else:
        n_test = _rows(cell.corpus.size, sizes["max_eval"], 0.2)
    name = cell.defense.name
    sets = [("clean", n_test)] + [
        (attack, n_triggers * (n_test // 2 if task_specific else n_test))
        for attack, n_triggers, task_specific in trigger_sets
    ]
    texts = sum(n for _, n in sets)
    seconds = LOAD_SECONDS + (texts * TEXT_SECONDS * cell.backbone.scale if cell.victim is not None else 0.0)
    if name == "none":
        return seconds
    if name not in TEXT_ONLY_SECONDS:
        passes = max(1.0, SCORE_PASSES.get(name, 1.0))
        return seconds + texts * passes * TEXT_SECONDS * cell.backbone.scale
    memoised = set() if memoised is None else memoised
    key = cell.defense_stage.key if cell.defense_stage is not None else name
    for text_set, n in sets:
        if (key, text_set) not in memoised:
            memoised.add((key, text_set))
            seconds += n * TEXT_ONLY_SECONDS[name]
    return seconds


def cell_trigger_sets(cell: Any) -> list[tuple[str, int, bool]]:
    """``(attack, n_triggers, task_specific)`` per trigger set the cell is evaluated with."""
    from peftshield.attacks.config import attack_config

    if getattr(cell, "mode", "victim") == "scan":
        return []
    if cell.attack.name == "none":
        sets = cell.evaluation["trigger_sets"]
        return [(s["attack"], len(s["triggers"]), s["kind"] == "task-specific") for s in sets]
    config = attack_config(cell.attack.name, cell.attack.recipe)
    return [(cell.attack.label, len(config.make_triggers()), config.kind == "task-specific")]


def plan_costs(cells: list[Any], built: set[str], done: set[str]) -> dict[str, float]:
    """Seconds per cell still to run; a shared stage counts once, for the first cell that needs it.

    ``built`` holds the keys of artifacts already on disk (they cost nothing), ``done`` the ids
    of finished cells (left out).
    """
    seen = set(built)
    memoised: set[tuple[str, str]] = set()
    out: dict[str, float] = {}
    for cell in cells:
        if cell.id in done:
            continue
        total = 0.0
        for stage in cell.stages():
            if stage.key in seen:
                continue
            seen.add(stage.key)
            poison_size = cell.attack.corpus.size if cell.attack.corpus is not None else None
            expect_pv = cell.attack.kind == "task-agnostic"
            total += stage_seconds(stage, cell.backbone.scale, cell.corpus.size, poison_size, expect_pv)
        total += evaluation_seconds(cell, cell_trigger_sets(cell), memoised)
        out[cell.id] = total
    return out
