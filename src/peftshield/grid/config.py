"""Grid configuration: read a YAML or JSON grid file and validate ALL of it before any cell runs.

Shape (every key optional except ``corpora``, ``backbones``, ``methods`` and ``defenses``)::

    name: small-study
    description: free text
    seeds: [0, 1]
    sizes:     {max_train: 400, max_eval: 150, split_seed: 0,
                poison_max_train: 800, poison_max_eval: 150, defense_max_train: 400,
                evaluate_on: test, dev_heldout: null}          # evaluate_on: dev (below)
    scan:      {texts: wiki, text_column: text, attempts: 30, max_total_steps: 90,
                stop_at_first: false, pooling: null or [cls, mean],
                mining: {...MiningConfig keys}, thresholds: {...} or FILE.json}
    corpora:   [movies, {name: data/reviews.csv, label: reviews, text_column: review, label_column: stars}]
    backbones: [minilm, {name: path/to/hf-folder, label: mine, scan: false}]   # scan: false | {...overrides}
    attacks:   [none, badnets, {name: por, label: por-100, recipe: {steps: 100}, corpus: wiki}]
    methods:   [lora, {name: prefix, label: prefix-8, config: {num_virtual_tokens: 8}, head: fresh}, none,
                {name: lora, label: lora-s0, seed: 0}]   # seed: the victim's tuning seed (default: cell's)
    defenses:  [none, psim, {name: monitor, threshold: 0.8},
                {name: psim, label: psim-policies, policies: [0.7, calibrated@0.01, {target_frr: 0.05}]}]
    benchmark: grid      # the ``benchmark`` field of grid.json (e.g. retention, psim: the report's section)
    mode: victim            # or scan: scan-only cells (below)
    zoo: seed               # a free label copied into every row (which model zoo the grid builds)

A list entry is a name or a mapping with ``name``, an optional ``label`` (unique within its list;
used in cell ids and result rows) and the entry's own keys. ``none`` is the clean control among
attacks (the clean backbone, measured with the triggers of every other attack), a cell without a
victim among methods (the defence is measured on detection only) and the undefended victim among
defences. Relative file and folder paths are read relative to the grid file's folder.

Threshold policies (``policies`` of a defence entry): the detector is fitted ONCE (the
threshold is not part of the fit's cache key; it is fitted with the first fixed policy, else its
default threshold), the fit saves
its scores of the clean held-out texts, and each policy's threshold is read from them (a fixed
number, or :func:`~peftshield.evaluation.metrics.calibrate_threshold` at the target FRR). A cell
then scores its texts once and yields one result row per policy (``threshold`` = the policy's
label, ``fixed@0.7`` / ``calibrated@0.01``).

Measured split (``sizes.evaluate_on``, docs/design.md "Choosing on the dev split"): ``test``
(default) measures every cell on the clean test split and its triggered copies, and the defences'
held-out texts (construction, calibration, threshold policies) are the dev split. ``dev`` measures
on the dev split instead, for the choices that must not read the test split (recipes,
optimisers): the dev split is cut in two, its first ``dev_heldout`` share (default 0.5) is the
defences' held-out texts and the cells measure the rest, so no threshold is calibrated on the
texts it is measured on. ``dev_heldout`` must lie strictly between 0 and 1 (0 would leave the
defences calibrating on the whole dev split, the one being measured: refused), and is refused with
``evaluate_on: test``. PSIM's own calibrated threshold comes from its ``calibration_fraction`` of
the defender's training data either way. Poisons and victims do not read the measured split, so
their cache keys do not depend on it (a results folder shares them between a dev and a test
grid); the defence's key and the cell id do. Every row records ``evaluate_on``.

An attack's ``seed`` pins its poisoning seed and a method's ``seed`` its victim's tuning seed
(default: the cell's seed); with both pinned, a grid's ``seeds`` repeat only the defence (one
victim, several fits of the defence, as an optimiser comparison needs).

Full fine-tuning budgets are method entries: ``{name: full, label: full-lr1e-4x2, config: {lr:
1e-4, epochs: 2}}``; a ``budgets`` list, ``{name: full, budgets: [{lr: 5e-5, epochs: 1}, ...]}``,
expands into one such entry per budget (labelled ``full-lr5e-5x1``) beside the default one.

Validation (:func:`load_grid`) raises one :class:`~peftshield.errors.PeftshieldError` naming the
offending entry for: an unknown key at any level (top, entry, ``sizes``, ``scan``, attack recipe,
method config, defence parameter, mining config, filter thresholds); an unknown attack, method,
defence, corpus or backbone; a missing file or folder; an unlabelled victim or task-specific
poisoning corpus; and impossible combinations (a defence that needs a victim beside method
``none``; a defence that needs an LMSanitator scan on a backbone with ``scan: false``; a defence
whose parameters coincide with an attack's trigger, e.g. a RAP word that is the BadNets trigger; a
victim that keeps the attacker's head where no attack publishes one; repeated labels or seeds).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError
from peftshield.utils.labels import budget_label
from peftshield.utils.strict import suggestion, unknown_keys
from peftshield.utils.validate import non_finite_path

NONE = "none"
TOP_KEYS = (
    "name",
    "benchmark",
    "description",
    "seeds",
    "sizes",
    "scan",
    "corpora",
    "backbones",
    "attacks",
    "methods",
    "defenses",
    "mode",
    "zoo",
)
REQUIRED = ("corpora", "backbones", "methods", "defenses")
MODES = ("victim", "scan")
#: The axes a scan-only grid does not have.
NOT_IN_SCAN_MODE = ("corpora", "methods", "defenses")
SIZE_DEFAULTS: dict[str, Any] = {
    "max_train": None,
    "max_eval": None,
    "split_seed": 0,
    "poison_max_train": None,  # default: max_train
    "poison_max_eval": None,  # default: max_eval
    "defense_max_train": None,  # default: max_train
    "evaluate_on": "test",  # or "dev" (module docstring)
    "dev_heldout": None,  # with evaluate_on dev: the dev share held out for the defences (default 0.5)
}
#: Splits a cell may be measured on (``sizes.evaluate_on``).
EVALUATE_ON = ("test", "dev")
#: The dev share held out for the defences when a grid measures the dev split.
DEV_HELDOUT_DEFAULT = 0.5
SCAN_DEFAULTS: dict[str, Any] = {
    "texts": "wiki",
    "text_column": "text",
    "attempts": 30,
    "max_total_steps": 300,
    # The monitor needs every PV (a first-PV scan covers one trigger of six on a POR minilm).
    "stop_at_first": False,
    # The vectors mined: null = every candidate vector of the architecture (the scan's default),
    # or a list narrowing it; part of the scan's cache key.
    "pooling": None,
    "mining": {},
    "thresholds": {},
}
HEADS = ("auto", "fresh", "keep")
#: The defence parameters a threshold policy sets (they leave the fit's cache key under ``policies``).
POLICY_KEYS = ("threshold", "target_frr")
_LABEL_RE = re.compile(r"[^A-Za-z0-9_.+-]+")
_DEFAULT_GRID = "default.json"


# --------------------------------------------------------------------------------------------
# Resolved entries


@dataclass(frozen=True)
class CorpusRef:
    """A corpus as the stages load it: ``ref`` (built-in name, absolute file path or ``hf:...``),
    its columns, and ``identity`` (what is hashed: the name of a built-in corpus, the content hash
    of a file). ``size`` is the number of examples when known (cost model only)."""

    label: str
    ref: str
    text_column: str = "text"
    label_column: str | None = "label"
    identity: dict[str, Any] = field(default_factory=dict)
    size: int | None = None

    def load_settings(self) -> dict[str, Any]:
        """The keys :func:`peftshield.data.corpora.load_splits` reads (without caps)."""
        return {"corpus": self.ref, "text_column": self.text_column, "label_column": self.label_column}


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone: registered name, local folder (absolute) or hub id; ``scan`` settings or ``None``."""

    label: str
    ref: str
    identity: dict[str, Any]
    scan: dict[str, Any] | None
    scale: float = 1.0  # compute cost relative to minilm (cost model only)


@dataclass(frozen=True)
class AttackEntry:
    """An attack with its resolved recipe (``AttackConfig.to_dict()``) and corpus, or the control."""

    label: str
    name: str
    kind: str | None = None
    recipe: dict[str, Any] | None = None
    corpus: CorpusRef | None = None
    seed: int | None = None  # the build seed; None: the cell's seed


@dataclass(frozen=True)
class MethodEntry:
    """A victim's PEFT method with its resolved config (``MethodConfig.to_dict()``) and head policy."""

    label: str
    name: str
    config: dict[str, Any] | None = None
    head: str = "auto"
    seed: int | None = None  # the victim's tuning seed; None: the cell's seed


@dataclass(frozen=True)
class DefenseEntry:
    """A defence with its resolved parameters (adapter defaults under the entry's values)."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    needs_victim: bool = False
    needs_scan: bool = False
    text_only_scores: bool = False
    #: threshold policies read from one scoring pass (``policies`` of the entry): each
    #: ``{"label": "fixed@0.7", "threshold": 0.7}`` or ``{"label": "calibrated@0.01", "target_frr": 0.01}``;
    #: empty: the fitted detector's own threshold is the one policy.
    policies: tuple[dict[str, Any], ...] = ()

    def key_params(self) -> dict[str, Any]:
        """The parameters that shape the fit: with ``policies`` the threshold is not one of them."""
        if not self.policies:
            return dict(self.params)
        return {k: v for k, v in self.params.items() if k not in POLICY_KEYS}


@dataclass(frozen=True)
class Sizes:
    """Data caps: victim train / eval, attacker train / eval, defender's clean training data; the
    split the cells measure (``evaluate_on``) and, when it is dev, the share of it held out for the
    defences (``dev_heldout``; module docstring)."""

    max_train: int | None
    max_eval: int | None
    split_seed: int
    poison_max_train: int | None
    poison_max_eval: int | None
    defense_max_train: int | None
    evaluate_on: str = "test"
    dev_heldout: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GridSpec:
    """A validated grid: every entry resolved, ready for :func:`peftshield.grid.plan.expand`."""

    name: str
    description: str
    source: str
    corpora: tuple[CorpusRef, ...]
    backbones: tuple[BackboneEntry, ...]
    attacks: tuple[AttackEntry, ...]
    methods: tuple[MethodEntry, ...]
    defenses: tuple[DefenseEntry, ...]
    seeds: tuple[int, ...]
    sizes: Sizes
    raw: dict[str, Any]
    #: the ``benchmark`` field of the grid's ``grid.json`` (the report's section): ``grid`` by default
    benchmark: str = "grid"
    mode: str = "victim"
    zoo: str | None = None


# --------------------------------------------------------------------------------------------
# Reading


def default_grid_path() -> Path:
    """The small default grid shipped with the package (``peftshield bench run default``)."""
    return Path(__file__).resolve().parent / _DEFAULT_GRID


def read_grid_file(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Parse a grid file (``.yaml``/``.yml`` with PyYAML, else JSON); ``default`` names the shipped grid."""
    if str(path) == "default":
        path = default_grid_path()
    path = Path(path).expanduser()
    if not path.is_file():
        raise PeftshieldError(f"grid file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PeftshieldError(f"cannot read grid file {path}: {err}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise PeftshieldError(
                f"{path}: reading a YAML grid needs PyYAML: pip install 'peftshield[yaml]' "
                "(or write the grid as JSON)"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "parse error"
            raise PeftshieldError(f"{path} is not valid YAML: {first}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PeftshieldError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise PeftshieldError(f"{path}: a grid file must hold a mapping of keys (corpora, backbones, ...)")
    return data, path


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid file (see the module docstring); raise on the first problem found."""
    data, resolved = read_grid_file(path)
    return validate_grid(data, base=resolved.parent, source=str(resolved))


# --------------------------------------------------------------------------------------------
# Validation helpers


class _Where:
    """Builds the "where" part of an error message: ``grid.json: attacks[2] (por)``."""

    def __init__(self, source: str) -> None:
        self.source = Path(source).name if source else "grid"

    def fail(self, where: str, message: str) -> PeftshieldError:
        return PeftshieldError(f"{self.source}: {where}: {message}")


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], where: str, w: _Where) -> None:
    message = unknown_keys(data, allowed)
    if message:
        raise w.fail(where, message)


def _label(text: str) -> str:
    label = _LABEL_RE.sub("_", text).strip("_")
    return label or "x"


def _entries(value: Any, key: str, w: _Where) -> list[tuple[str, dict[str, Any]]]:
    """Normalise a list of names / mappings into ``(where, mapping with name)`` pairs."""
    if value is None:
        return []
    if isinstance(value, str | dict):
        value = [value]
    if not isinstance(value, list):
        raise w.fail(key, f"must be a list of names or mappings, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise w.fail(f"{key}[{i}]", f"must be a name or a mapping, got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise w.fail(f"{key}[{i}]", "needs a 'name'")
        label = item.get("label")
        if label is not None and (not isinstance(label, str) or not label or _LABEL_RE.search(label)):
            raise w.fail(
                f"{key}[{i}] ({name})",
                f"'label' must be letters, digits, '.', '_', '+' or '-' (it names files), got {label!r}",
            )
        out.append((f"{key}[{i}] ({name})", dict(item)))
    return out


def _unique_labels(items: list[Any], key: str, w: _Where) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.label in seen:
            raise w.fail(
                f"{key}[{i}] ({item.label})",
                f"repeats the label of {key}[{seen[item.label]}]; give one of them a distinct 'label'",
            )
        seen[item.label] = i


def _int_or_none(value: Any, where: str, w: _Where, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise w.fail(where, f"must be an integer >= {minimum} or null, got {value!r}")
    return value


def _resolve_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


# --------------------------------------------------------------------------------------------
# Corpora and backbones


_KNOWN_SIZES = {"movies": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190, "wiki": 20000}


def _corpus_ref(
    name: str,
    where: str,
    w: _Where,
    base: Path,
    *,
    label: str | None = None,
    text_column: str = "text",
    label_column: str | None = "label",
    labelled: bool,
) -> CorpusRef:
    """Resolve a corpus name or file; check it exists and, where ``labelled``, carries labels."""
    from peftshield.data.corpora import CORPORA, FILE_SUFFIXES, cached_corpus_size, load_corpus

    if not isinstance(text_column, str) or not text_column:
        raise w.fail(where, "text_column must be a non-empty string")
    if label_column is not None and (not isinstance(label_column, str) or not label_column):
        raise w.fail(where, "label_column must be a non-empty string")
    if name in CORPORA:
        spec = CORPORA[name]
        if labelled and not spec.labelled:
            raise w.fail(where, f"corpus {name!r} is unlabelled; this use needs labelled examples")
        size = cached_corpus_size(spec)
        return CorpusRef(
            label=label or name,
            ref=name,
            text_column="text",
            label_column="label" if labelled else None,
            identity={"builtin": name, "artifact": spec.artifact, "min_abs_rating": spec.min_abs_rating},
            size=size if size is not None else _KNOWN_SIZES.get(name),
        )
    if name.startswith("hf:"):
        return CorpusRef(
            label=label or _label(name[3:]),
            ref=name,
            text_column=text_column,
            label_column=label_column if labelled else None,
            identity={"hf": name, "text_column": text_column, "label_column": label_column},
        )
    path = _resolve_path(name, base)
    if path.suffix.lower() not in FILE_SUFFIXES and not path.exists():
        known = ", ".join(CORPORA)
        raise w.fail(where, f"unknown corpus {name!r}; known: {known}; or a {'/'.join(FILE_SUFFIXES)} file")
    if not path.is_file():
        raise w.fail(where, f"corpus file not found: {path}")
    from peftshield.grid.cache import file_digest

    columns = {"text_column": text_column, "label_column": label_column if labelled else None}
    try:
        examples = load_corpus(str(path), **columns)
    except PeftshieldError as err:
        raise w.fail(where, str(err)) from None
    if labelled and len({e.label for e in examples}) < 2:
        raise w.fail(where, f"{path} holds a single class; a classifier needs at least two")
    return CorpusRef(
        label=label or _label(path.stem),
        ref=str(path.resolve()),
        identity={"file": file_digest(path), **columns},
        size=len(examples),
        **columns,
    )


def _backbone_scale(location: str) -> float:
    """Compute cost of a backbone relative to minilm (layers x hidden^2), from its config.json."""
    try:
        config = json.loads((Path(location) / "config.json").read_text(encoding="utf-8"))
        layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return 1.0
    return max(layers * hidden * hidden / (6 * 384 * 384), 1e-3)


def _backbone(
    where: str, item: dict[str, Any], scan_defaults: dict[str, Any] | None, w: _Where, base: Path
) -> BackboneEntry:
    import importlib.metadata

    from peftshield.grid.cache import folder_digest
    from peftshield.models.backbones import BACKBONES, hub_unreachable, looks_local, resolve_backbone

    _check_keys(item, ("name", "label", "scan"), where, w)
    name = item["name"]
    if name in BACKBONES:
        try:
            location, _ = resolve_backbone(name)
        except PeftshieldError as err:
            raise w.fail(where, str(err)) from None
        package = BACKBONES[name].package
        try:
            version = importlib.metadata.version(package.replace("_", "-")) if package else ""
        except importlib.metadata.PackageNotFoundError:
            version = ""
        ref, identity, label = name, {"registered": name, "package": package, "version": version}, name
    else:
        path = _resolve_path(name, base)
        if not path.exists() and "/" not in name and "\\" not in name:
            choices = ", ".join(BACKBONES)
            raise w.fail(where, f"unknown backbone {name!r}: not a registered name ({choices}) nor a folder")
        if path.exists() or looks_local(name) or Path(base, name.split("/")[0]).is_dir():
            try:
                location, _ = resolve_backbone(str(path))
            except PeftshieldError as err:
                raise w.fail(where, str(err)) from None
            ref, identity, label = location, {"folder": folder_digest(location)}, _label(path.name)
        else:  # owner/name: a hub id, usable where a hub is reachable
            reason = hub_unreachable()
            if reason is not None:
                raise w.fail(where, f"{name!r} is not a local folder, and not a hub id here: {reason}")
            location, ref, identity, label = "", name, {"hub": name}, _label(name.replace("/", "_"))
    scan = _scan_settings(item.get("scan", True), scan_defaults, f"{where}.scan", w, base)
    return BackboneEntry(
        label=item.get("label") or label,
        ref=ref,
        identity=identity,
        scan=scan,
        scale=_backbone_scale(location) if location else 1.0,
    )


def _scan_settings(
    value: Any, defaults: dict[str, Any] | None, where: str, w: _Where, base: Path
) -> dict[str, Any] | None:
    """Merge a backbone's ``scan`` (``false`` | ``true`` | overrides) into the grid's scan settings."""
    if value is False or value is None:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise w.fail(where, f"must be false, true or a mapping of scan settings, got {value!r}")
    assert defaults is not None
    _check_keys(value, tuple(SCAN_DEFAULTS), where, w)
    merged = {**defaults}
    for key, item in value.items():
        if key in ("mining", "thresholds") and isinstance(item, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **item}
        else:
            merged[key] = item
    return _check_scan(merged, where, w, base)


def _check_scan(settings: dict[str, Any], where: str, w: _Where, base: Path) -> dict[str, Any]:
    """Validate resolved scan settings; return them with mining config and thresholds resolved."""
    from peftshield.defenses.lmsanitator.filtering import FilterThresholds
    from peftshield.defenses.lmsanitator.mining import MiningConfig
    from peftshield.utils.io import read_json

    out = dict(settings)
    for key in ("attempts", "max_total_steps"):
        value = out[key]
        if key == "max_total_steps" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise w.fail(f"{where}.{key}", f"must be a positive integer, got {value!r}")
    if not isinstance(out["stop_at_first"], bool):
        raise w.fail(f"{where}.stop_at_first", "must be true or false")
    pooling = out["pooling"]
    if pooling is not None:
        from peftshield.models.pooling import POOLING_CHOICES

        names = [pooling] if isinstance(pooling, str) else pooling
        if not isinstance(names, list) or not names or any(n not in POOLING_CHOICES for n in names):
            raise w.fail(
                f"{where}.pooling",
                f"must be null (every candidate vector) or a list of {', '.join(POOLING_CHOICES)}",
            )
        out["pooling"] = list(dict.fromkeys(names))
    if not isinstance(out["mining"], dict):
        raise w.fail(f"{where}.mining", "must be a mapping of mining config keys")
    try:
        out["mining"] = MiningConfig.from_dict(out["mining"]).to_dict()
    except PeftshieldError as err:
        raise w.fail(f"{where}.mining", str(err)) from None
    thresholds = out["thresholds"]
    if isinstance(thresholds, str):
        try:
            data = read_json(_resolve_path(thresholds, base))
        except PeftshieldError as err:
            raise w.fail(f"{where}.thresholds", str(err)) from None
        thresholds = data.get("thresholds", data) if isinstance(data, dict) else data
    if not isinstance(thresholds, dict):
        raise w.fail(f"{where}.thresholds", "must be a mapping of filter thresholds or a JSON file")
    try:
        out["thresholds"] = FilterThresholds.from_dict(thresholds).to_dict()
    except PeftshieldError as err:
        raise w.fail(f"{where}.thresholds", str(err)) from None
    texts = out["texts"]
    if not isinstance(texts, str) or not texts:
        raise w.fail(f"{where}.texts", "must be a corpus name or a text file")
    out["texts"] = _corpus_ref(
        texts, f"{where}.texts", w, base, text_column=out["text_column"], label_column=None, labelled=False
    )
    return out


# --------------------------------------------------------------------------------------------
# Attacks, methods, defences


def _is_none_entry(item: dict[str, Any], where: str, w: _Where) -> bool:
    """Whether ``item`` is the ``none`` entry of its axis (which takes a label and nothing else)."""
    if item["name"] != NONE:
        return False
    _check_keys(item, ("name", "label"), where, w)
    return True


def _require_known(what: str, name: str, known: Any, where: str, w: _Where) -> None:
    """Fail naming ``where`` unless ``name`` is ``none`` or one of ``known`` (with a suggestion)."""
    choices = (NONE, *[k for k in known if k != NONE])
    if name not in choices:
        raise w.fail(
            where, f"unknown {what} {name!r}{suggestion(name, choices)}; choose one of {', '.join(choices)}"
        )


def _config(make: Any, name: str, value: Any, what: str, where: str, w: _Where) -> Any:
    """``make(name, value)`` for an entry's config mapping; a bad mapping fails naming ``where``."""
    value = value or {}
    if not isinstance(value, dict):
        raise w.fail(where, f"must be a mapping of {what} config keys")
    try:
        return make(name, value)
    except PeftshieldError as err:
        raise w.fail(where, str(err)) from None


def _attack(where: str, item: dict[str, Any], w: _Where, base: Path) -> AttackEntry:
    from peftshield.attacks.config import ATTACKS, attack_config

    if _is_none_entry(item, where, w):
        return AttackEntry(label=item.get("label") or NONE, name=NONE)
    name = item["name"]
    _check_keys(item, ("name", "label", "recipe", "corpus", "text_column", "label_column", "seed"), where, w)
    _require_known("attack", name, ATTACKS, where, w)
    config = _config(attack_config, name, item.get("recipe"), "attack", f"{where}.recipe", w)
    seed = item.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise w.fail(f"{where}.seed", f"must be an integer >= 0, got {seed!r}")
    # a clean builder that fine-tunes reads labels, as the task-specific attacks do
    task_specific = config.kind == "task-specific" or bool(getattr(config, "labelled", False))
    corpus = _corpus_ref(
        item.get("corpus") or type(config).default_corpus,
        f"{where}.corpus",
        w,
        base,
        text_column=item.get("text_column", "text"),
        label_column=item.get("label_column", "label") if task_specific else None,
        labelled=task_specific,
    )
    return AttackEntry(
        label=item.get("label") or name,
        name=name,
        kind=config.kind,
        recipe=config.to_dict(),
        corpus=corpus,
        seed=seed,
    )


def _method(where: str, item: dict[str, Any], w: _Where) -> MethodEntry:
    from peftshield.tuning.config import METHODS, method_config

    if _is_none_entry(item, where, w):
        return MethodEntry(label=item.get("label") or NONE, name=NONE)
    name = item["name"]
    _check_keys(item, ("name", "label", "config", "head", "seed"), where, w)
    _require_known("method", name, METHODS, where, w)
    config = _config(method_config, name, item.get("config"), "method", f"{where}.config", w)
    head = item.get("head", "auto")
    if head not in HEADS:
        raise w.fail(f"{where}.head", f"must be one of {', '.join(HEADS)}, got {head!r}")
    seed = item.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise w.fail(f"{where}.seed", f"must be an integer >= 0, got {seed!r}")
    return MethodEntry(
        label=item.get("label") or name, name=name, config=config.to_dict(), head=head, seed=seed
    )


def _budget_methods(
    where: str, item: dict[str, Any], base_label: str, budgets: Any, w: _Where
) -> list[MethodEntry]:
    """The extra training budgets of a method entry (``budgets: [{lr: 5e-5, epochs: 3}, ...]``):
    one entry each, the base entry's config under the budget's keys, labelled ``<label>-lr<LR>x<EPOCHS>``
    (:func:`~peftshield.utils.labels.budget_label`)
    (or the budget's own ``label``). Retention reads full fine-tuning at several budgets this way."""
    if item["name"] == NONE:
        raise w.fail(where, "method 'none' takes no budgets")
    if not isinstance(budgets, list) or not budgets:
        raise w.fail(f"{where}.budgets", "must be a non-empty list of mappings, e.g. [{lr: 5e-5, epochs: 3}]")
    out = []
    for i, budget in enumerate(budgets):
        here = f"{where}.budgets[{i}]"
        if not isinstance(budget, dict) or not budget:
            raise w.fail(here, f"must be a mapping of method config keys (lr, epochs, ...), got {budget!r}")
        budget = dict(budget)
        label = budget.pop("label", None)
        if label is None:
            if set(budget) != {"lr", "epochs"}:
                raise w.fail(here, "give a 'label' for a budget that sets more than lr and epochs")
            if not all(
                isinstance(budget[k], int | float) and not isinstance(budget[k], bool) for k in budget
            ):
                raise w.fail(here, f"lr and epochs must be numbers, got {budget!r}")
            label = f"{base_label}-{budget_label(budget['lr'], budget['epochs'])}"
        sub = {**item, "label": _label(str(label)), "config": {**(item.get("config") or {}), **budget}}
        out.append(_method(here, sub, w))
    return out


def _trigger_strings(attack: AttackEntry) -> tuple[str, ...]:
    """Every literal string ``attack`` inserts as a trigger (none for the control)."""
    from peftshield.attacks.config import attack_config_from_dict

    if attack.recipe is None:
        return ()
    config = attack_config_from_dict(attack.recipe)
    return tuple(s for trigger in config.make_triggers() for s in trigger.strings())


def _defense(where: str, item: dict[str, Any], w: _Where) -> DefenseEntry:
    from peftshield.grid.defenses import ALIASES, defense_names, get_adapter

    if _is_none_entry(item, where, w):
        return DefenseEntry(label=item.get("label") or NONE, name=NONE)
    name = item["name"]
    _require_known("defence", name, (*defense_names(), *ALIASES), where, w)
    adapter = get_adapter(name)
    given = {k: v for k, v in item.items() if k not in ("name", "label", "policies")}
    policies: tuple[dict[str, Any], ...] = ()
    if "policies" in item:
        policies = _policies(item["policies"], f"{where}.policies", w)
        if "threshold" not in adapter.params:
            raise w.fail(where, f"defence {name!r} has no threshold, so it takes no 'policies'")
        clash = sorted(set(given) & set(POLICY_KEYS))
        if clash:
            raise w.fail(where, f"set {', '.join(clash)} through 'policies' only (one entry per policy)")
        # The detector is fitted (and its parameters checked) with the first fixed policy, else with
        # its defaults; every policy's threshold is then read from the clean held-out scores saved
        # with the fit (a calibrated policy never uses the detector's own calibration).
        fixed = [p for p in policies if "threshold" in p]
        for policy in fixed[1:]:  # every fixed value must be one this defence accepts
            adapter.resolve(
                {**given, "threshold": policy["threshold"]}, f"{w.source}: {where} ({policy['label']})"
            )
        if fixed:
            given = {**given, "threshold": fixed[0]["threshold"]}
    params = adapter.resolve(given, f"{w.source}: {where}")
    return DefenseEntry(
        label=item.get("label") or name,
        name=adapter.name,
        params=params,
        needs_victim=adapter.needs_victim,
        needs_scan=adapter.needs_scan,
        text_only_scores=adapter.text_only_scores,
        policies=policies,
    )


def _policies(value: Any, where: str, w: _Where) -> tuple[dict[str, Any], ...]:
    """A defence's threshold policies: a fixed number, ``"calibrated@FRR"``, or
    ``{"threshold": X}`` / ``{"target_frr": F}`` (optionally with a ``label``)."""
    if not isinstance(value, list) or not value:
        raise w.fail(where, 'must be a non-empty list of thresholds, e.g. [0.7, "calibrated@0.05"]')
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if isinstance(item, str) and item.startswith("calibrated@"):
            try:
                item = {"target_frr": float(item.split("@", 1)[1])}
            except ValueError:
                raise w.fail(here, f"write calibrated@<FRR>, e.g. calibrated@0.05, got {item!r}") from None
        elif isinstance(item, int | float) and not isinstance(item, bool):
            item = {"threshold": item}
        if not isinstance(item, dict):
            raise w.fail(here, f"must be a number, 'calibrated@<FRR>' or a mapping, got {item!r}")
        _check_keys(item, ("label", "threshold", "target_frr"), here, w)
        if ("threshold" in item) == ("target_frr" in item):
            raise w.fail(here, "give exactly one of 'threshold' (fixed) and 'target_frr' (calibrated)")
        if "threshold" in item:
            value_ = item["threshold"]
            if isinstance(value_, bool) or not isinstance(value_, int | float):
                raise w.fail(here, f"threshold must be a number, got {value_!r}")
            policy = {"label": f"fixed@{float(value_):g}", "threshold": float(value_)}
        else:
            frr = item["target_frr"]
            if isinstance(frr, bool) or not isinstance(frr, int | float) or not 0.0 < frr < 1.0:
                raise w.fail(here, f"target_frr must lie strictly between 0 and 1, got {frr!r}")
            policy = {"label": f"calibrated@{float(frr):g}", "target_frr": float(frr)}
        label = item.get("label", policy["label"])
        if not isinstance(label, str) or not label:
            raise w.fail(here, f"label must be a non-empty string, got {label!r}")
        policy["label"] = label
        out.append(policy)
    labels = [p["label"] for p in out]
    if len(set(labels)) != len(labels):
        raise w.fail(where, f"repeated policy in {labels}")
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The whole grid


def _name(data: dict[str, Any], source: str, w: _Where) -> tuple[str, str, str]:
    name = data.get("name") or (Path(source).stem if source else "grid")
    description = data.get("description") or ""
    if not isinstance(name, str) or not isinstance(description, str):
        raise w.fail("name", "name and description must be strings")
    benchmark = data.get("benchmark", "grid")
    if not isinstance(benchmark, str) or not benchmark or _LABEL_RE.search(benchmark):
        raise w.fail(
            "benchmark", f"must be a name of letters, digits, '.', '_', '+' or '-', got {benchmark!r}"
        )
    return name, description, benchmark


def _sizes(data: dict[str, Any], w: _Where) -> Sizes:
    sizes_in = data.get("sizes") or {}
    if not isinstance(sizes_in, dict):
        raise w.fail("sizes", "must be a mapping")
    _check_keys(sizes_in, tuple(SIZE_DEFAULTS), "sizes", w)
    merged = {**SIZE_DEFAULTS, **sizes_in}
    for key, value in merged.items():
        if key not in ("evaluate_on", "dev_heldout"):
            merged[key] = _int_or_none(value, f"sizes.{key}", w, minimum=0 if key == "split_seed" else 1)
    merged["evaluate_on"], merged["dev_heldout"] = _measured_split(merged, w)
    merged["split_seed"] = merged["split_seed"] or 0
    for key, fallback in (
        ("poison_max_train", "max_train"),
        ("poison_max_eval", "max_eval"),
        ("defense_max_train", "max_train"),
    ):
        if merged[key] is None:
            merged[key] = merged[fallback]
    return Sizes(**merged)


def _measured_split(sizes: dict[str, Any], w: _Where) -> tuple[str, float | None]:
    """``(evaluate_on, dev_heldout)`` checked (module docstring, "Measured split")."""
    split, share = sizes["evaluate_on"], sizes["dev_heldout"]
    if split not in EVALUATE_ON:
        raise w.fail("sizes.evaluate_on", f"must be one of {', '.join(EVALUATE_ON)}, got {split!r}")
    if split == "test":
        if share is not None:
            raise w.fail(
                "sizes.dev_heldout",
                "only with evaluate_on: dev (a test-split grid holds all of dev out for the defences)",
            )
        return split, None
    if share is None:
        return split, DEV_HELDOUT_DEFAULT
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise w.fail("sizes.dev_heldout", f"must be a number strictly between 0 and 1, got {share!r}")
    if share <= 0:
        raise w.fail(
            "sizes.dev_heldout",
            f"is {share!r} with evaluate_on: dev: the defences would calibrate on the dev texts the "
            "cells measure; hold a share of the dev split out for them (strictly between 0 and 1, e.g. 0.5)",
        )
    if share >= 1:
        raise w.fail(
            "sizes.dev_heldout",
            f"is {share!r}: no dev text would be left to measure; use a share strictly between 0 and 1",
        )
    return split, float(share)


def _seeds(data: dict[str, Any], w: _Where) -> tuple[int, ...]:
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise w.fail("seeds", "must be a non-empty list of integers")
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise w.fail(f"seeds[{i}]", f"must be an integer >= 0, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise w.fail("seeds", f"repeated seed in {seeds}")
    return tuple(seeds)


def _scan_defaults(data: dict[str, Any], w: _Where) -> dict[str, Any]:
    """The grid's scan settings (validated only where a backbone keeps its scan)."""
    scan_in = data.get("scan") or {}
    if not isinstance(scan_in, dict):
        raise w.fail("scan", "must be a mapping of scan settings")
    _check_keys(scan_in, tuple(SCAN_DEFAULTS), "scan", w)
    return {**SCAN_DEFAULTS, **scan_in}


def _scan_grid(data: dict[str, Any], w: _Where, base: Path, source: str, zoo: str | None) -> GridSpec:
    """A scan-only grid (``mode: scan``, module docstring): backbones x attacks x seeds, each scanned."""
    name, description, benchmark = _name(data, source, w)
    seeds = _seeds(data, w)
    sizes = _sizes(data, w)
    if sizes.evaluate_on != "test":
        raise w.fail("sizes.evaluate_on", "a scan-only grid measures no split of a corpus; leave it out")
    scan_defaults = _scan_defaults(data, w)
    backbones = []
    for where, item in _entries(data["backbones"], "backbones", w):
        if item.get("scan", True) is False:
            raise w.fail(where, "a scan-only grid scans every backbone; scan: false is not allowed here")
        backbones.append(_backbone(where, item, scan_defaults, w, base))
    _unique_labels(backbones, "backbones", w)
    attacks = [
        _attack(where, item, w, base) for where, item in _entries(data.get("attacks") or [NONE], "attacks", w)
    ]
    _unique_labels(attacks, "attacks", w)
    return GridSpec(
        name=name,
        description=description,
        source=source,
        corpora=(),
        backbones=tuple(backbones),
        attacks=tuple(attacks),
        methods=(),
        defenses=(),
        seeds=seeds,
        sizes=sizes,
        raw=data,
        benchmark=benchmark,
        mode="scan",
        zoo=zoo,
    )


def validate_grid(data: dict[str, Any], *, base: Path | None = None, source: str = "") -> GridSpec:
    """Validate a parsed grid mapping (see the module docstring) into a :class:`GridSpec`."""
    w = _Where(source)
    base = base or Path.cwd()
    _check_keys(data, TOP_KEYS, "top level", w)
    bad = non_finite_path(data)
    if bad is not None:
        raise w.fail(bad, "must be a finite number (NaN and infinities are refused)")
    mode = data.get("mode", "victim")
    if mode not in MODES:
        raise w.fail("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    zoo = data.get("zoo")
    if zoo is not None and (not isinstance(zoo, str) or not zoo or _LABEL_RE.search(zoo)):
        raise w.fail("zoo", f"must be a label (letters, digits, '.', '_', '+', '-'), got {zoo!r}")
    if mode == "scan":
        given = [k for k in NOT_IN_SCAN_MODE if k in data]
        if given:
            raise w.fail(
                ", ".join(given),
                "a scan-only grid (mode: scan) has no victims: leave out corpora, methods and defenses",
            )
        if not data.get("backbones"):
            raise w.fail("backbones", "is missing or empty")
        return _scan_grid(data, w, base, source, zoo)
    for key in REQUIRED:
        if not data.get(key):
            raise w.fail(key, "is missing or empty")
    name, description, benchmark = _name(data, source, w)
    seeds = _seeds(data, w)
    sizes = _sizes(data, w)
    scan_defaults = _scan_defaults(data, w)

    corpora = []
    for where, item in _entries(data["corpora"], "corpora", w):
        _check_keys(item, ("name", "label", "text_column", "label_column"), where, w)
        corpora.append(
            _corpus_ref(
                item["name"],
                where,
                w,
                base,
                label=item.get("label"),
                text_column=item.get("text_column", "text"),
                label_column=item.get("label_column", "label"),
                labelled=True,
            )
        )
    _unique_labels(corpora, "corpora", w)

    defenses = [_defense(where, item, w) for where, item in _entries(data["defenses"], "defenses", w)]
    _unique_labels(defenses, "defenses", w)
    scan_needed = any(d.needs_scan for d in defenses)

    backbones = []
    for where, item in _entries(data["backbones"], "backbones", w):
        # Scan settings are checked only where a defence will scan (texts may be a corpus to fetch).
        if not scan_needed and "scan" not in item:
            item = {**item, "scan": False}
        backbones.append(_backbone(where, item, scan_defaults, w, base))
    _unique_labels(backbones, "backbones", w)

    attacks = [
        _attack(where, item, w, base) for where, item in _entries(data.get("attacks") or [NONE], "attacks", w)
    ]
    _unique_labels(attacks, "attacks", w)
    for j, attack in enumerate(attacks):
        if attack.kind == "clean":
            raise w.fail(
                f"attacks[{j}] ({attack.label})",
                "a clean builder plants no trigger to measure a victim with; use it in a scan-only grid "
                "(mode: scan), or attack 'none' as the clean control",
            )
    methods = []
    for where, item in _entries(data["methods"], "methods", w):
        budgets = item.pop("budgets", None)
        methods.append(_method(where, item, w))
        if budgets is not None:
            methods += _budget_methods(where, item, methods[-1].label, budgets, w)
    _unique_labels(methods, "methods", w)

    # impossible combinations
    from peftshield.grid.defenses import get_adapter

    for i, defense in enumerate(defenses):
        where = f"defenses[{i}] ({defense.label})"
        check_attack = None if defense.name == NONE else get_adapter(defense.name).check_attack
        for j, attack in enumerate(attacks):
            if check_attack is not None and attack.name != NONE:
                try:
                    check_attack(defense.params, _trigger_strings(attack))
                except PeftshieldError as err:
                    raise w.fail(where, f"against attacks[{j}] ({attack.label}): {err}") from None
        if defense.needs_victim:
            for j, method in enumerate(methods):
                if method.name == NONE:
                    raise w.fail(
                        where,
                        f"needs a tuned victim, but methods[{j}] is 'none' (no victim); "
                        "drop one of them or list this defence in a grid without method 'none'",
                    )
        if defense.needs_scan:
            for j, backbone in enumerate(backbones):
                if backbone.scan is None:
                    raise w.fail(
                        where,
                        f"needs an LMSanitator scan of every backbone, but backbones[{j}] ({backbone.label}) "
                        "has scan: false",
                    )
    for j, method in enumerate(methods):
        if method.head == "keep":
            bare = [a.label for a in attacks if a.kind != "task-specific"]
            if bare:
                raise w.fail(
                    f"methods[{j}] ({method.label}).head",
                    f"'keep' needs the attacker's published head, but attack(s) {', '.join(bare)} "
                    "publish none "
                    "(use head: auto to keep it only where there is one)",
                )
    if all(m.name == NONE for m in methods) and all(d.name == NONE for d in defenses):
        raise w.fail("methods", "with no victim and no defence there is nothing to measure")

    return GridSpec(
        name=name,
        description=description,
        source=source,
        corpora=tuple(corpora),
        backbones=tuple(backbones),
        attacks=tuple(attacks),
        methods=tuple(methods),
        defenses=tuple(defenses),
        seeds=tuple(seeds),
        sizes=sizes,
        raw=data,
        benchmark=benchmark,
        zoo=zoo,
    )
