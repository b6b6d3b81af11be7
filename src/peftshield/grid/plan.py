"""Expand a validated grid into cells, each a chain of content-keyed stages.

Cells = corpus x backbone x attack x method x defence x seed, minus the combinations that measure
nothing (no victim and no defence). Each cell holds up to four stages (:class:`~.cache.Stage`):

- ``poison`` (attack != none): the attacked backbone; key = backbone identity + attack recipe +
  poisoning corpus and caps + seed, so every cell with that attack shares it;
- ``victim`` (method != none): the tuned victim; key = the (poisoned) backbone's key + method
  config + head + victim corpus and caps + seed;
- ``scan`` (defences that need it, e.g. the monitor): the LMSanitator scan of the (poisoned)
  backbone; key = backbone key + scan settings + seed;
- ``defense`` (defence != none): the fitted defence; key = its inputs (the backbone for PSIM, the
  victim and the scan for the monitor) + parameters + defender data + seed, so PSIM is fitted once
  per backbone and reused by every victim method. With threshold ``policies`` the threshold is not
  among the keyed parameters: one fit serves every policy (each a row of the same cell).

The cell id (``corpus.backbone.attack.method.defense.s<seed>.<hash>``) hashes every stage key and
the evaluation settings: a result file is reused only for exactly the same cell.

A grid measured on the dev split (``sizes.evaluate_on: dev``, :mod:`.config`) adds the split and
its held-out share to the defence's key (its held-out texts are the first part of dev) and to the
evaluation settings; the poison and victim keys do not change (they never read the measured split),
nor does anything of a test-split grid (its keys are those it had before the option existed).

Order: cells are interleaved across their poisoned backbones (round robin), so that parallel
workers start on different poisonings instead of queueing for one.

A scan-only grid (``mode: scan``, :mod:`.config`) expands to backbone x attack x seed cells with
two stages, ``poison`` (the attack or clean build; none for attack ``none``) and ``scan``; id
``<zoo or scan>.backbone.attack.s<seed>.<hash>``. An attack's own ``seed`` (if set) seeds its
poison stage instead of the cell's seed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from peftshield.grid.cache import Stage, digest
from peftshield.grid.config import (
    NONE,
    AttackEntry,
    BackboneEntry,
    CorpusRef,
    DefenseEntry,
    GridSpec,
    MethodEntry,
)

#: Bump when the evaluation of a cell changes (new metrics, other trigger insertion).
EVAL_VERSION = 2  # 2: asr_dominant per trigger set; threshold policies
#: Payload folder name inside each artifact folder, per stage kind.
PAYLOADS = {"poison": "model", "victim": "model", "scan": "scan", "defense": "detector"}
STAGE_KINDS = ("poison", "victim", "scan", "defense")


@dataclass
class Cell:
    """One experiment: a victim (or none) on a (poisoned) backbone behind a defence (or none)."""

    id: str
    seed: int
    corpus: CorpusRef
    backbone: BackboneEntry
    attack: AttackEntry
    method: MethodEntry
    defense: DefenseEntry
    sizes: dict[str, Any]
    poison: Stage | None
    victim: Stage | None
    scan: Stage | None
    defense_stage: Stage | None
    evaluation: dict[str, Any]
    mode: str = "victim"  # or "scan": a scan-only cell (no victim, no corpus, no defence)
    zoo: str | None = None  # the grid's zoo label, copied into the row

    def stages(self) -> list[Stage]:
        """The cell's stages in execution order."""
        return [s for s in (self.poison, self.victim, self.scan, self.defense_stage) if s is not None]

    def labels(self) -> dict[str, Any]:
        """The docs/design.md row keys that name the cell."""
        if self.mode == "scan":
            return {
                "mode": "scan",
                "zoo": self.zoo,
                "backbone": self.backbone.label,
                "attack": self.attack.label,
                "model": self.attack.label,
                "seed": self.seed,
            }
        return {
            "backbone": self.backbone.label,
            "corpus": self.corpus.label,
            "attack": self.attack.label,
            "method": self.method.label,
            "defense": self.defense.label,
            "seed": self.seed,
        }

    def title(self) -> str:
        """``corpus/backbone/attack/method/defense s<seed>`` for logs (``scan/backbone/attack``)."""
        if self.mode == "scan":
            return f"scan/{self.backbone.label}/{self.attack.label} s{self.seed}"
        names = (self.corpus, self.backbone, self.attack, self.method, self.defense)
        return "/".join(x.label for x in names) + f" s{self.seed}"


def trigger_sets(attacks: tuple[AttackEntry, ...] | list[AttackEntry]) -> list[dict[str, Any]]:
    """The triggers a clean control is measured with: those of every real attack of the grid."""
    from peftshield.attacks.config import attack_config

    out = []
    for attack in attacks:
        if attack.name == NONE:
            continue
        config = attack_config(attack.name, attack.recipe)
        out.append(
            {
                "attack": attack.label,
                "kind": config.kind,
                "triggers": [t.to_dict() for t in config.make_triggers()],
                "target": getattr(config, "target", None) if config.kind == "task-specific" else None,
            }
        )
    return out


def _victim_data(corpus: CorpusRef, sizes: dict[str, Any]) -> dict[str, Any]:
    return {
        "corpus": corpus.identity,
        "split_seed": sizes["split_seed"],
        "max_train": sizes["max_train"],
        "max_eval": sizes["max_eval"],
    }


def measured_split(sizes: dict[str, Any]) -> dict[str, Any]:
    """What a dev-split grid adds to the defence key and the evaluation settings (empty for test)."""
    if sizes.get("evaluate_on", "test") == "test":
        return {}
    return {"evaluate_on": sizes["evaluate_on"], "dev_heldout": sizes["dev_heldout"]}


def poison_stage(backbone: BackboneEntry, attack: AttackEntry, sizes: dict[str, Any], seed: int) -> Stage:
    """The poisoning of ``backbone`` by ``attack`` (see the module docstring for the key)."""
    assert attack.corpus is not None and attack.recipe is not None
    spec: dict[str, Any] = {
        "attack": attack.name,
        "recipe": attack.recipe,
        "corpus": attack.corpus.identity,
        "seed": seed if attack.seed is None else attack.seed,
    }
    if attack.kind == "task-specific":
        spec["data"] = {
            "split_seed": sizes["split_seed"],
            "max_train": sizes["poison_max_train"],
            "max_eval": sizes["poison_max_eval"],
        }
    return Stage(
        kind="poison",
        name=attack.name,
        spec=spec,
        inputs={"backbone": digest(backbone.identity)},
        args={
            "backbone": backbone.ref,
            "corpus": attack.corpus.load_settings(),
            "corpus_label": attack.corpus.label,
        },
    )


def victim_stage(
    backbone_key: str, corpus: CorpusRef, method: MethodEntry, head: str, sizes: dict[str, Any], seed: int
) -> Stage:
    """The victim's tuning of the (poisoned) backbone ``backbone_key`` on ``corpus``."""
    seed = seed if method.seed is None else method.seed  # a method's own seed pins its tuning
    return Stage(
        kind="victim",
        name=method.name,
        spec={"method": method.config, "head": head, "data": _victim_data(corpus, sizes), "seed": seed},
        inputs={"backbone": backbone_key},
        args={"corpus": corpus.load_settings(), "corpus_label": corpus.label},
    )


def scan_stage(backbone_key: str, settings: dict[str, Any], seed: int) -> Stage:
    """The LMSanitator scan of the (poisoned) backbone ``backbone_key``."""
    texts: CorpusRef = settings["texts"]
    spec = {k: v for k, v in settings.items() if k not in ("texts", "text_column")}
    spec.update({"texts": texts.identity, "seed": seed})
    return Stage(
        kind="scan",
        name="lmsanitator",
        spec=spec,
        inputs={"backbone": backbone_key},
        args={"texts": texts.ref, "text_column": texts.text_column},
    )


def defense_stage(
    defense: DefenseEntry,
    backbone_key: str,
    victim: Stage | None,
    scan: Stage | None,
    corpus: CorpusRef,
    sizes: dict[str, Any],
    seed: int,
) -> Stage:
    """The fitting of ``defense``: keyed by exactly what it reads (see the module docstring).

    A defence whose scores depend on the text alone (ONION's LM) reads no model of the cell, so
    one fitting serves every backbone and victim.
    """
    inputs = {} if defense.text_only_scores else {"backbone": backbone_key}
    if defense.needs_victim:
        assert victim is not None
        inputs = {"victim": victim.key}
    if defense.needs_scan:
        assert scan is not None
        inputs["scan"] = scan.key
    data = {
        "corpus": corpus.identity,
        "split_seed": sizes["split_seed"],
        "train": sizes["defense_max_train"],
        "heldout": sizes["max_eval"],
        **measured_split(sizes),
    }
    return Stage(
        kind="defense",
        name=defense.name,
        spec={"defense": defense.name, "params": defense.key_params(), "data": data, "seed": seed},
        inputs=inputs,
        args={"corpus": corpus.load_settings()},
    )


def _evaluated_defense(defense: DefenseEntry) -> dict[str, Any]:
    """What of a defence the evaluation reads (part of the cell id): its parameters, and its
    threshold policies when it has several (the cut is then not among the parameters)."""
    if not defense.policies:
        return {"name": defense.name, "params": defense.params}
    return {"name": defense.name, "params": defense.key_params(), "policies": list(defense.policies)}


def _head(method: MethodEntry, attack: AttackEntry) -> str:
    # auto: keep the head a task-specific attacker publishes (PSIM's reference victim does), else fresh.
    if method.head == "auto":
        return "keep" if attack.kind == "task-specific" else "fresh"
    return method.head


def expand_scan(grid: GridSpec) -> list[Cell]:
    """The scan-only cells of a ``mode: scan`` grid (module docstring), in the order listed."""
    sizes = grid.sizes.to_dict()
    none_method = MethodEntry(label=NONE, name=NONE)
    scan_defense = DefenseEntry(label="scan", name="scan")
    cells = []
    for seed in grid.seeds:
        for backbone in grid.backbones:
            assert backbone.scan is not None
            base_key = digest(backbone.identity)
            for attack in grid.attacks:
                poison = None if attack.name == NONE else poison_stage(backbone, attack, sizes, seed)
                scan = scan_stage(poison.key if poison else base_key, backbone.scan, seed)
                evaluation = {"version": EVAL_VERSION, "mode": "scan", "seed": seed}
                stages = [s for s in (poison, scan) if s is not None]
                cell_hash = digest(
                    {"stages": [s.key for s in stages], "base": base_key, "evaluation": evaluation}, 8
                )
                prefix = grid.zoo or "scan"
                cells.append(
                    Cell(
                        id=f"{prefix}.{backbone.label}.{attack.label}.s{seed}.{cell_hash}",
                        seed=seed,
                        corpus=backbone.scan["texts"],
                        backbone=backbone,
                        attack=attack,
                        method=none_method,
                        defense=scan_defense,
                        sizes=sizes,
                        poison=poison,
                        victim=None,
                        scan=scan,
                        defense_stage=None,
                        evaluation=evaluation,
                        mode="scan",
                        zoo=grid.zoo,
                    )
                )
    return cells


def expand(grid: GridSpec) -> list[Cell]:
    """Every cell of ``grid``, in run order (round robin over poisoned backbones)."""
    if grid.mode == "scan":
        return expand_scan(grid)
    sizes = grid.sizes.to_dict()
    control_triggers = trigger_sets(grid.attacks)
    groups: OrderedDict[str, list[Cell]] = OrderedDict()
    for seed in grid.seeds:
        for corpus in grid.corpora:
            for backbone in grid.backbones:
                base_key = digest(backbone.identity)
                for attack in grid.attacks:
                    poison = None if attack.name == NONE else poison_stage(backbone, attack, sizes, seed)
                    backbone_key = poison.key if poison else base_key
                    group = groups.setdefault(f"{seed}:{backbone_key}", [])
                    for method in grid.methods:
                        head = _head(method, attack)
                        victim = (
                            None
                            if method.name == NONE
                            else victim_stage(backbone_key, corpus, method, head, sizes, seed)
                        )
                        for defense in grid.defenses:
                            if victim is None and defense.name == NONE:
                                continue  # nothing to measure
                            scan = None
                            if defense.needs_scan:
                                assert backbone.scan is not None
                                scan = scan_stage(backbone_key, backbone.scan, seed)
                            fitted = (
                                None
                                if defense.name == NONE
                                else defense_stage(defense, backbone_key, victim, scan, corpus, sizes, seed)
                            )
                            evaluation = {
                                "version": EVAL_VERSION,
                                "data": {**_victim_data(corpus, sizes), **measured_split(sizes)},
                                "defense": _evaluated_defense(defense),
                                "trigger_sets": control_triggers if attack.name == NONE else "poison record",
                                "seed": seed,
                            }
                            stages = [s for s in (poison, victim, scan, fitted) if s is not None]
                            cell_hash = digest(
                                {
                                    "stages": [s.key for s in stages],
                                    "base": base_key,
                                    "evaluation": evaluation,
                                },
                                8,
                            )
                            labels = (corpus.label, backbone.label, attack.label, method.label, defense.label)
                            group.append(
                                Cell(
                                    id=".".join(labels) + f".s{seed}.{cell_hash}",
                                    seed=seed,
                                    corpus=corpus,
                                    backbone=backbone,
                                    attack=attack,
                                    method=method,
                                    defense=defense,
                                    sizes=sizes,
                                    poison=poison,
                                    victim=victim,
                                    scan=scan,
                                    defense_stage=fitted,
                                    evaluation=evaluation,
                                    zoo=grid.zoo,
                                )
                            )
    return _round_robin(list(groups.values()))


def _round_robin(groups: list[list[Cell]]) -> list[Cell]:
    out: list[Cell] = []
    depth = max((len(g) for g in groups), default=0)
    for i in range(depth):
        out += [g[i] for g in groups if i < len(g)]
    return out


def unique_stages(cells: list[Cell]) -> dict[str, dict[str, Stage]]:
    """The distinct stages of ``cells`` by kind and key (shared stages appear once)."""
    out: dict[str, dict[str, Stage]] = {kind: {} for kind in STAGE_KINDS}
    for cell in cells:
        for stage in cell.stages():
            out[stage.kind].setdefault(stage.key, stage)
    return out
