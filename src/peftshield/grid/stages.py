"""The stage chain of one grid cell: poison -> victim tune -> scan -> defence fit -> evaluate.

Each builder writes one artifact folder (the payload of an :class:`~.cache.ArtifactStore` entry)
with the library's own entry points and returns what it measured:

- poison: :func:`peftshield.attacks.task_specific.poison_task_specific` (full fine-tuning on a
  poisoned labelled corpus, PSIM's threat model) or
  :func:`peftshield.attacks.task_agnostic.poison_task_agnostic` (POR / NeuBA on unlabelled text,
  LMSanitator's threat model), or a clean builder (:mod:`peftshield.attacks.clean`: a model
  continued-trained with an honest objective, the clean half of a zoo);
- victim: :func:`peftshield.tuning.trainer.tune` + :func:`~peftshield.tuning.trainer.save_tuned`, or
  for a ``plain-peft`` method :func:`peftshield.tuning.plain_peft.train_plain_peft` (a plain peft
  adapter folder, loaded back with :func:`peftshield.defenses.victim.load_victim`);
- scan: :func:`peftshield.defenses.lmsanitator.scan.scan` (PV mining and filtering);
- defence: the defence's adapter (:mod:`peftshield.grid.defenses`).

:func:`execute_cell` runs the chain of a cell (building or reusing each artifact), then
:func:`peftshield.grid.evaluate.evaluate_cell` (a scan-only cell:
:func:`~peftshield.grid.evaluate.evaluate_scan_cell`), and writes the cell's result file. Every artifact
is read back from disk before it is used, whether it was built just now or long ago, so a resumed
run computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from peftshield.grid.cache import CELLS_DIR, ArtifactStore, Stage
from peftshield.grid.plan import PAYLOADS, STAGE_KINDS, Cell

_SPLITS: dict[str, Any] = {}
#: Artifacts whose build failed in this process: later cells needing them fail at once, not after
#: building them again (a new run retries them).
_FAILED: dict[str, str] = {}


def reset_memos() -> None:
    """Forget the data and failures remembered by this process (each run starts afresh)."""
    _SPLITS.clear()
    _FAILED.clear()


def forget_failures() -> None:
    """Forget the failed builds remembered by this process (a long-lived worker serving a new task)."""
    _FAILED.clear()


def load_split(corpus: dict[str, Any], split_seed: int, max_train: int | None, max_eval: int | None) -> Any:
    """The deterministic splits of a corpus (memoised per process: cells share their data)."""
    from peftshield.data.corpora import load_splits

    settings = {**corpus, "split_seed": split_seed, "max_train": max_train, "max_eval": max_eval}
    key = json.dumps(settings, sort_keys=True)
    if key not in _SPLITS:
        _SPLITS[key] = load_splits(settings)
    return _SPLITS[key]


def heldout_and_measured(corpus: dict[str, Any], sizes: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """``(the defences' clean held-out examples, the clean examples the cell measures)``.

    The one place that says which texts calibrate and which are measured (docs/design.md,
    "Choosing on the dev split"): with ``evaluate_on: test`` (default) the dev split and the test
    split; with ``evaluate_on: dev`` the first ``round(dev_heldout * n)`` examples of the dev split
    (already shuffled by its split seed) and the rest of it, which never overlap.
    """
    from peftshield.errors import PeftshieldError

    splits = load_split(corpus, sizes["split_seed"], sizes["max_train"], sizes["max_eval"])
    dev = list(splits.dev)
    if sizes.get("evaluate_on", "test") == "test":
        return dev, list(splits.test)
    cut = int(round(float(sizes["dev_heldout"]) * len(dev)))
    heldout, measured = dev[:cut], dev[cut:]
    if not heldout or not measured:
        raise PeftshieldError(
            f"the dev split holds {len(dev)} examples: too few to hold {sizes['dev_heldout']:g} of them out "
            "for the defences and measure the rest; raise sizes.max_eval or change sizes.dev_heldout"
        )
    return heldout, measured


def _texts(source: str, text_column: str) -> list[str]:
    from peftshield.data.corpora import load_corpus

    return [e.text for e in load_corpus(source, text_column=text_column, label_column=None)]


# ------------------------------------------------------------------------------------- builders


def build_poison(stage: Stage, device: Any, out: Path) -> dict[str, Any]:
    """Poison the stage's backbone with its recipe into ``out``; return the attacker's figures."""
    from peftshield.attacks.config import attack_config_from_dict

    config = attack_config_from_dict(stage.spec["recipe"])
    seed = int(stage.spec["seed"])  # the attack's own seed where the grid gives one
    corpus = stage.args["corpus"]
    label = stage.args["corpus_label"]
    from peftshield.attacks.poison import poison

    data = stage.spec.get("data") or {}
    splits = None
    if config.kind == "task-specific":
        splits = load_split(corpus, data["split_seed"], data["max_train"], data["max_eval"])
    result = poison(
        stage.args["backbone"],
        config,
        corpus["corpus"],
        seed=seed,
        device=device,
        progress=False,
        text_column=corpus.get("text_column", "text"),
        label_column=corpus.get("label_column") or "label",
        split_seed=data.get("split_seed", 0),
        max_train=data.get("max_train"),
        max_eval=data.get("max_eval"),
        splits=splits,
        name=label,
    )
    result.save(out)
    record = result.record
    return {
        "attack": record.attack,
        "kind": record.kind,
        "target": record.target,
        "triggers": [t.describe() for t in record.trigger_objects()],
        "poison_seconds": round(record.wall_seconds, 3),
        "attacker_metrics": {k: v for k, v in record.metrics.items() if k != "history"},
    }


def loop_figures(history: list[dict[str, Any]], n_train: int, batch_size: int) -> dict[str, Any]:
    """The training loop's cost from a trainer's ``history``: epochs, optimiser steps, and the seconds
    of the training steps (``epoch_seconds``: dev evaluation excluded) in all, per epoch and per step.

    The tuning benchmark's figures (``bench/grids/tuning.json``): both trainers time their epochs
    alike, so ``seconds_per_step`` of a ``lora`` and a ``peft-lora`` victim compares peftshield's
    loop with a plain transformers + peft loop on the same batches.
    """
    epochs = len(history)
    if not epochs or not all("epoch_seconds" in h for h in history):
        return {}
    steps = math.ceil(n_train / batch_size) * epochs
    loop = sum(float(h["epoch_seconds"]) for h in history)
    return {
        "epochs": epochs,
        "optimizer_steps": steps,
        "loop_seconds": round(loop, 3),
        "seconds_per_epoch": round(loop / epochs, 6),
        "seconds_per_step": round(loop / steps, 6),
    }


def build_victim(stage: Stage, backbone: str, device: Any, out: Path) -> dict[str, Any]:
    """Tune the victim on the (poisoned) ``backbone`` into ``out``; return its training figures."""
    from peftshield.tuning.config import config_from_dict
    from peftshield.tuning.trainer import save_tuned, tune

    config = config_from_dict(stage.spec["method"])
    data, seed, head = stage.spec["data"], int(stage.spec["seed"]), stage.spec["head"]
    corpus = stage.args["corpus"]
    splits = load_split(corpus, data["split_seed"], data["max_train"], data["max_eval"])
    if config.trainer == "plain-peft":
        # A user's artifact: trained by transformers + peft alone, on the backbone's own weights
        # (a fresh head: the attacker's head.safetensors is peftshield's file, no user has it).
        from peftshield.models.backbones import resolve_backbone
        from peftshield.tuning.plain_peft import train_plain_peft

        location = resolve_backbone(backbone)[0]
        info = train_plain_peft(location, splits.train, splits.dev, config, out, seed=seed, device=device)
        loop = loop_figures(info["history"], len(splits.train), config.batch_size)
        return {**info, **loop, "head": "fresh"}
    result = tune(
        backbone, splits.train, splits.dev, config, seed=seed, device=device, head=head, progress=False
    )
    settings = {
        **corpus,
        "split_seed": data["split_seed"],
        "max_train": data["max_train"],
        "max_eval": data["max_eval"],
    }
    save_tuned(result, out, extra={"data": settings, "seed": seed, "head": head})
    return {
        "dev_accuracy": result.best_dev_accuracy,
        "tune_seconds": round(result.train_seconds, 3),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "n_train": len(splits.train),
        **loop_figures(result.history, len(splits.train), config.batch_size),
        "head": head,
    }


def build_scan(stage: Stage, backbone: str, device: Any, out: Path) -> dict[str, Any]:
    """Scan the (poisoned) ``backbone`` for PVs (LMSanitator) into ``out``; return the verdict."""
    from peftshield.defenses.lmsanitator.filtering import FilterThresholds
    from peftshield.defenses.lmsanitator.mining import MiningConfig
    from peftshield.defenses.lmsanitator.scan import scan

    spec = stage.spec
    result = scan(
        backbone,
        _texts(stage.args["texts"], stage.args["text_column"]),
        config=MiningConfig.from_dict(spec["mining"]),
        thresholds=FilterThresholds.from_dict(spec["thresholds"]),
        attempts=spec["attempts"],
        max_total_steps=spec["max_total_steps"],
        stop_at_first=spec["stop_at_first"],
        pooling=spec.get("pooling"),
        device=device,
        seed=int(spec["seed"]),
        progress=False,
    )
    result.texts = str(stage.args["texts"])
    result.save(out)
    return {
        "verdict": result.verdict,
        "vectors": {name: vector.n_pvs for name, vector in result.vectors.items()},
        "n_pvs": result.n_pvs,
        "steps": result.steps,
        "attempts": len(result.attempts),
        "scan_seconds": round(result.seconds, 3),
    }


INACTIVE_FILE = "inactive.json"
#: Beside a fitted defence with threshold policies: its scores of the clean held-out texts.
HELDOUT_SCORES_FILE = "heldout_scores.json"


def build_defense(
    adapter: Any,
    params: dict[str, Any],
    inputs: Any,
    out: Path,
    *,
    policies: bool = False,
    heldout_label: str = "clean held-out (dev)",
) -> dict[str, Any]:
    """Fit a defence with its adapter and save it into ``out`` (or record why it is inactive).

    With ``policies``, the fitted detector also scores the clean held-out texts (never the split
    the cells measure, :func:`heldout_and_measured`) into ``HELDOUT_SCORES_FILE`` beside ``out``:
    every policy's threshold is read from them.
    """
    import numpy as np

    from peftshield.utils.io import write_json

    detector, info = adapter.fit(inputs, params)
    if detector is None:
        out.mkdir(parents=True)
        write_json(out / INACTIVE_FILE, info)
        return info
    detector.save(out)
    if policies:
        scores = np.asarray(detector.score(list(inputs.clean_heldout)), dtype=float)
        if not np.isfinite(scores).all():
            raise ValueError("the fitted defence gave a non-finite score on a clean held-out text")
        write_json(
            out.parent / HELDOUT_SCORES_FILE,
            {"split": heldout_label, "n": int(scores.size), "scores": [float(x) for x in scores]},
        )
        info = {**info, "n_heldout_scores": int(scores.size)}
    return info


def policy_thresholds(policies: Any, folder: Path) -> list[tuple[str, float]]:
    """``(label, threshold value)`` per policy, from the held-out scores saved with the fit."""
    from peftshield.evaluation.metrics import calibrate_threshold
    from peftshield.utils.io import read_json

    path = folder.parent / HELDOUT_SCORES_FILE
    scores = read_json(path)["scores"] if path.is_file() else None
    out = []
    for policy in policies:
        if "threshold" in policy:
            out.append((policy["label"], float(policy["threshold"])))
            continue
        if scores is None:
            raise ValueError(f"{path.name} is missing beside the fitted defence: no calibrated policy")
        out.append((policy["label"], calibrate_threshold(scores, policy["target_frr"])))
    return out


# ------------------------------------------------------------------------------------- one cell


#: In a cell file: the rows of the cell's other threshold policies, as their differences from the
#: first policy's row (which is the cell file itself). :func:`policy_rows` unpacks them.
OTHER_POLICIES = "other_policies"


def pack_policy_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell file from the rows of its threshold policies (the first row, the others' differences)."""
    first = dict(rows[0])
    if len(rows) > 1:
        first[OTHER_POLICIES] = [{k: v for k, v in r.items() if rows[0].get(k) != v} for r in rows[1:]]
    return first


def policy_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The result rows of one cell file: one per threshold policy (docs/design.md, one row per policy)."""
    others = row.get(OTHER_POLICIES)
    first = {k: v for k, v in row.items() if k != OTHER_POLICIES}
    if not isinstance(others, list):
        return [first]
    return [first, *({**first, **diff} for diff in others)]


def cell_file(results: Path, cell_id: str) -> Path:
    """Where a cell's result is written."""
    return results / CELLS_DIR / f"{cell_id}.json"


def read_row(results: Path, cell_id: str) -> dict[str, Any] | None:
    """A cell's result row, or ``None`` when it has none (or an unreadable one, rerun then)."""
    from peftshield.errors import PeftshieldError
    from peftshield.utils.io import read_json

    path = cell_file(results, cell_id)
    if not path.is_file():
        return None
    try:
        row = read_json(path)
    except PeftshieldError:
        return None
    return row if isinstance(row, dict) else None


def _stage_entry(
    stage: Stage, record: dict[str, Any], built: bool, folder: Path, results: Path
) -> dict[str, Any]:
    return {
        "key": stage.key,
        "built_now": built,
        "seconds": record.get("seconds"),
        "folder": str(folder.relative_to(results)),
        **record.get("info", {}),
    }


def _run_chain(
    cell: Cell, store: ArtifactStore, device: Any, upto: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build or reuse the stages of ``cell`` (all, or those up to kind ``upto``); return
    ``(paths by kind, stage entries by kind)``."""
    from peftshield.grid.defenses import FitInputs, get_adapter

    results = store.results
    paths: dict[str, Any] = {"backbone": cell.backbone.ref, "victim": None, "scan": None, "defense": None}
    entries: dict[str, Any] = {}

    def run(stage: Stage, build) -> Path:
        if stage.key in _FAILED:
            raise RuntimeError(f"{stage.describe()} failed earlier in this run: {_FAILED[stage.key]}")
        try:
            payload, record, built = store.get_or_build(
                stage, build, payload=PAYLOADS[stage.kind], cell=cell.id
            )
        except Exception as err:
            _FAILED[stage.key] = f"{type(err).__name__}: {err}"
            raise
        entries[stage.kind] = _stage_entry(stage, record, built, payload.parent, results)
        return payload

    def wanted(kind: str) -> bool:
        return upto is None or STAGE_KINDS.index(kind) <= STAGE_KINDS.index(upto)

    if cell.poison is not None:
        stage = cell.poison
        paths["backbone"] = str(run(stage, lambda out: build_poison(stage, device, out)))
    backbone = paths["backbone"]
    if cell.victim is not None and wanted("victim"):
        stage_v = cell.victim
        paths["victim"] = str(run(stage_v, lambda out: build_victim(stage_v, backbone, device, out)))
    if cell.scan is not None and wanted("scan"):
        stage_s = cell.scan
        paths["scan"] = str(run(stage_s, lambda out: build_scan(stage_s, backbone, device, out)))
    if cell.defense_stage is not None and wanted("defense"):
        stage_d = cell.defense_stage
        adapter = get_adapter(cell.defense.name)
        sizes = cell.sizes
        corpus = stage_d.args["corpus"]

        def fit(out: Path) -> dict[str, Any]:
            train = load_split(
                corpus, sizes["split_seed"], sizes["defense_max_train"], sizes["max_eval"]
            ).train
            heldout, _ = heldout_and_measured(corpus, sizes)
            inputs = FitInputs(
                backbone=backbone,
                victim=paths["victim"],
                scan=paths["scan"],
                clean_train=list(train),
                clean_heldout=[e.text for e in heldout],
                seed=cell.seed,
                device=str(device),
            )
            dev_part = sizes.get("evaluate_on", "test") == "dev"
            label = f"first {sizes['dev_heldout']:g} of dev" if dev_part else "clean held-out (dev)"
            return build_defense(
                adapter,
                cell.defense.params,
                inputs,
                out,
                policies=bool(cell.defense.policies),
                heldout_label=label,
            )

        paths["defense"] = str(run(stage_d, fit))
    return paths, entries


def _load_defense(cell: Cell, folder: str, backbone: str, victim: Any, device: Any, results: Path) -> Any:
    from peftshield.grid.defenses import LoadInputs, get_adapter, threshold_label
    from peftshield.grid.evaluate import LoadedDefense
    from peftshield.grid.scorememo import ScoreMemo
    from peftshield.utils.io import read_json

    adapter = get_adapter(cell.defense.name)
    label = threshold_label(cell.defense.params)
    policies = cell.defense.policies
    inactive = Path(folder) / INACTIVE_FILE
    if inactive.is_file():
        reason = read_json(inactive).get("inactive", "inactive")
        chosen = [(p["label"], 0.0) for p in policies] or None
        return LoadedDefense(cell.defense.name, adapter, None, label, inactive=reason, policies=chosen)
    detector = adapter.load(Path(folder), LoadInputs(backbone=backbone, victim=victim, device=str(device)))
    memo = None
    if adapter.text_only_scores and cell.defense_stage is not None:
        memo = ScoreMemo(results, cell.defense_stage.key)
    chosen = policy_thresholds(policies, Path(folder)) if policies else None
    return LoadedDefense(cell.defense.name, adapter, detector, label, memo=memo, policies=chosen)


def _summary_fields(entries: dict[str, Any]) -> dict[str, Any]:
    """Per-stage figures the report reads at the top level of a row."""
    out: dict[str, Any] = {}
    poison, victim, scan, defense = (entries.get(k, {}) for k in ("poison", "victim", "scan", "defense"))
    if poison:
        out["poison_seconds"] = poison.get("seconds")
        metrics = poison.get("attacker_metrics", {})
        out["attacker_cacc"], out["attacker_asr"] = metrics.get("cacc"), metrics.get("asr")
    if victim:
        out["dev_accuracy"] = victim.get("dev_accuracy")
        out["tune_seconds"] = victim.get("seconds")
        out["trainable_params"] = victim.get("trainable_params")
        # the tuning benchmark's figures (loop_figures); absent from victims built before them
        for key in (
            "total_params",
            "n_train",
            "epochs",
            "optimizer_steps",
            "seconds_per_epoch",
            "seconds_per_step",
        ):
            if key in victim:
                out[key] = victim[key]
    if scan:
        out["scan_verdict"], out["n_pvs"] = scan.get("verdict"), scan.get("n_pvs")
        if "vectors" in scan:
            out["scan_vectors"] = scan["vectors"]
        out["scan_seconds"] = scan.get("seconds")
    if defense:
        out["fit_seconds"] = defense.get("seconds")
    return out


def portable_ref(ref: str | None) -> str | None:
    """A corpus or backbone reference without this machine's folders: a path becomes its last name.

    Result rows name what they measured (built-in names, hub ids, file and folder names); the
    content hashes in the stage keys say exactly which file it was.
    """
    if ref is None or not os.path.isabs(os.path.expanduser(ref)):
        return ref
    return Path(ref).name


def _machine_roots(results: Path) -> list[tuple[str, str]]:
    """This machine's folders that may appear in an error message, longest first, with placeholders."""
    import sysconfig

    import peftshield

    roots = {
        str(results.resolve()): "<results>",
        str(Path(peftshield.__file__).resolve().parent): "<peftshield>",
        sysconfig.get_paths()["purelib"]: "<site-packages>",
        sys.prefix: "<python>",
        str(Path.home()): "~",
    }
    return sorted(((k, v) for k, v in roots.items() if len(k) > 1), key=lambda kv: -len(kv[0]))


def scrub_paths(text: str, results: Path) -> str:
    """``text`` (an error, a traceback) with this machine's folders replaced by placeholders."""
    for root, placeholder in _machine_roots(results):
        text = text.replace(root, placeholder)
    return text


def cell_config(cell: Cell) -> dict[str, Any]:
    """Everything that configured the cell (the report prints it beside the figures), without paths."""
    if cell.mode == "scan":
        return {
            "mode": "scan",
            "backbone": portable_ref(cell.backbone.ref),
            "attack": {
                "name": cell.attack.name,
                "recipe": cell.attack.recipe,
                "corpus": portable_ref(cell.attack.corpus.ref) if cell.attack.corpus else None,
                "seed": cell.poison.spec["seed"] if cell.poison else None,
            },
            "scan": cell.scan.spec if cell.scan else None,
        }
    config: dict[str, Any] = {
        "corpus": portable_ref(cell.corpus.ref),
        "backbone": portable_ref(cell.backbone.ref),
        "attack": {
            "name": cell.attack.name,
            "recipe": cell.attack.recipe,
            "corpus": portable_ref(cell.attack.corpus.ref) if cell.attack.corpus else None,
        },
        "method": {
            "name": cell.method.name,
            "config": cell.method.config,
            "head": cell.victim.spec["head"] if cell.victim else None,
        },
        "defense": {"name": cell.defense.name, "params": cell.defense.params},
        "sizes": cell.sizes,
    }
    if cell.scan is not None:
        config["scan"] = cell.scan.spec
    return config


def _head(cell: Cell) -> dict[str, Any]:
    if cell.mode == "scan":  # no defence: no threshold; the builder names how the model was made
        return {"cell": cell.id, **cell.labels(), "kind": cell.attack.kind, "builder": cell.attack.name}
    head = {
        "cell": cell.id,
        **cell.labels(),
        "kind": cell.attack.kind,
        "threshold": None,
        "evaluate_on": cell.sizes.get("evaluate_on", "test"),
    }
    if cell.zoo is not None:
        head["zoo"] = cell.zoo
    if against := _adaptive_against(cell.attack.name):
        head["adaptive"] = against  # the defence an adaptive attack targets (attacks/adaptive)
    return head


def _adaptive_against(attack: str) -> str | None:
    """The defence an adaptive attack was shaped against (``adaptive_against``), else ``None``."""
    from peftshield.attacks.config import ATTACKS

    return getattr(ATTACKS.get(attack), "adaptive_against", None)


def record_failure(
    cell: Cell, results: str | Path, error: str, trace: str = "", seconds: float = 0.0
) -> dict[str, Any]:
    """Write and return the row of a cell that failed (docs/design.md: a failed cell is a row with
    ``error``, not a missing row; the next run retries it). Paths of this machine are scrubbed."""
    from peftshield.utils.io import write_json
    from peftshield.utils.runinfo import run_metadata

    results = Path(results)
    row = {
        **_head(cell),
        "error": scrub_paths(error, results),
        "traceback": scrub_paths(trace, results),
        "seconds": round(seconds, 3),
        "config": cell_config(cell),
        "meta": run_metadata(),
    }
    ArtifactStore(results).log.write("cell-failed", cell=cell.id, error=row["error"])
    write_json(cell_file(results, cell.id), row)
    return row


#: Fault injection for the tests: the path of a marker file. The first cell to reach the end of its
#: stages creates the file and ends its process at once, as a worker killed mid-cell would.
CRASH_ONCE_ENV = "PEFTSHIELD_TEST_CRASH_ONCE"


def _crash_once() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return
    os._exit(70)


def build_stages(cell: Cell, results: str | Path, device_name: str, upto: str) -> dict[str, Any]:
    """Build (or reuse) the stages of ``cell`` up to kind ``upto``: an executor's artifact task.

    Returns ``{"cell", "upto"}``, with ``error`` when a build failed (the executor then fails the
    cells that need it without building it again).
    """
    from peftshield.utils.device import resolve_device

    out: dict[str, Any] = {"cell": cell.id, "upto": upto}
    try:
        _run_chain(cell, ArtifactStore(Path(results)), resolve_device(device_name), upto)
    except Exception as err:  # recorded in the stage log by the store; reported with the cells
        out["error"] = scrub_paths(f"{type(err).__name__}: {err}", Path(results))
    return out


def execute_cell(cell: Cell, results: str | Path, device_name: str = "auto") -> dict[str, Any]:
    """Run ``cell`` (stages, then evaluation), write ``cells/<id>.json`` atomically and return the row.

    Any exception becomes a row with ``error`` and ``traceback`` (docs/design.md: a failed cell is a
    row, not a missing one); the next run retries it. ``KeyboardInterrupt`` propagates.
    """
    from peftshield.attacks.record import read_poison_record
    from peftshield.grid.evaluate import evaluate_policies, trigger_set_from_dict, trigger_set_from_record
    from peftshield.tuning.trainer import load_tuned
    from peftshield.utils.device import resolve_device
    from peftshield.utils.io import write_json
    from peftshield.utils.runinfo import run_metadata

    results = Path(results)
    store = ArtifactStore(results)
    started = time.perf_counter()
    store.log.write("cell-start", cell=cell.id)
    try:
        device = resolve_device(device_name)
        paths, entries = _run_chain(cell, store, device)
        _crash_once()
        if cell.mode == "scan":
            from peftshield.grid.evaluate import evaluate_scan_cell

            metrics = evaluate_scan_cell(paths["scan"], paths["backbone"], cell.attack.name, cell.attack.kind)
            row = {
                **_head(cell),
                **metrics,
                "poison_seconds": entries.get("poison", {}).get("seconds"),
                "seconds": round(time.perf_counter() - started, 3),
                "stages": entries,
                "config": cell_config(cell),
                "meta": run_metadata(),
            }
            write_json(cell_file(results, cell.id), row)
            store.log.write("cell-done", cell=cell.id, seconds=row["seconds"])
            return row
        victim = None
        if paths["victim"] is not None:
            if Path(paths["victim"], "run.json").is_file():
                victim = load_tuned(paths["victim"], device=device, backbone=paths["backbone"])
            else:  # a plain peft adapter folder (method trainer plain-peft), read as users' artifacts are
                from peftshield.defenses.victim import load_victim

                victim = load_victim(paths["victim"], device=str(device))
        defense = None
        if paths["defense"] is not None:
            defense = _load_defense(cell, paths["defense"], paths["backbone"], victim, device, results)
        if cell.poison is not None:
            sets = [trigger_set_from_record(cell.attack.label, read_poison_record(paths["backbone"]))]
        else:
            sets = [trigger_set_from_dict(s) for s in cell.evaluation["trigger_sets"]]
        _, measured = heldout_and_measured(cell.corpus.load_settings(), cell.sizes)
        per_policy = evaluate_policies(
            victim, defense, measured, sets, seed=cell.seed, control=cell.attack.name == "none"
        )
        shared = {
            **_summary_fields(entries),
            "seconds": round(time.perf_counter() - started, 3),
            "stages": entries,
            "config": cell_config(cell),
            "meta": run_metadata(),
        }
        rows = [{**_head(cell), **metrics, **shared} for metrics in per_policy]
        row = pack_policy_rows(rows)
    except Exception as err:  # a failed cell is recorded and the grid goes on
        error, trace = f"{type(err).__name__}: {err}", traceback.format_exc()[-4000:]
        return record_failure(cell, results, error, trace, time.perf_counter() - started)
    write_json(cell_file(results, cell.id), row)
    store.log.write("cell-done", cell=cell.id, seconds=row["seconds"])
    return row
