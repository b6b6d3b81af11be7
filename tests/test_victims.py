"""Victims in every form (issue 11): loader paths, the head-input rule, every defence, bad input.

Tiny random BERT, RoBERTa, MPNet and Llama classifiers and plain-peft adapters on them are built
in-process the way a user builds them (``AutoModelForSequenceClassification``, ``get_peft_model``,
``save_pretrained``; :mod:`peftshield.models.tiny_classifiers`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_examples
from test_guard_cli import run_cli

from peftshield.cli import main
from peftshield.defenses.victim import load_victim
from peftshield.errors import PeftshieldError
from peftshield.models.tiny import save_tiny
from peftshield.models.tiny_classifiers import ARCHITECTURES, build_tiny_base, tiny_adapter, tiny_classifier

TEXTS = [
    "a good film",
    "the plot was very dull and the ending was long",
    "bad",
    "it is a lovely story of the city and the river",
    "many people watched it",
]
FORMS = ("full", "lora", "prompt", "ptuning")
#: The vector each architecture's head reads (the rule of peftshield.models.representation).
HEAD_READS = {"bert": "pooler", "roberta": "cls", "mpnet": "cls", "llama": "last"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    """Per architecture: the base folder and, per form, the in-memory (model, tokenizer) and its folder."""
    root = tmp_path_factory.mktemp("byom")
    out: dict = {}
    for arch in ARCHITECTURES:
        base = build_tiny_base(root / arch / "base", arch, seed=0)
        forms = {}
        for form in FORMS:
            if form == "full":
                model, tokenizer = tiny_classifier(base, num_labels=3, seed=1)
                folder = save_tiny(root / arch / "full", model, tokenizer)
            else:
                model, tokenizer = tiny_adapter(base, arch, form, num_labels=3, seed=2)
                folder = root / arch / form
                model.save_pretrained(folder)
            forms[form] = (model, tokenizer, folder)
        out[arch] = {"base": base, "forms": forms, "root": root / arch}
    return out


def _head_logits(arch: str, model, vector: torch.Tensor) -> torch.Tensor:
    """Apply the architecture's head to the vector it reads (what transformers' head does after it)."""
    from peftshield.models.representation import find_head

    _, head = find_head(model)
    if hasattr(head, "modules_to_save"):  # peft's trained copy of the head
        head = head.modules_to_save["default"]
    if arch in ("roberta", "mpnet"):  # dense + tanh + out_proj over the first token
        return head.out_proj(torch.tanh(head.dense(vector)))
    return head(vector)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reload_gives_identical_predictions(zoo, arch, form):
    model, tokenizer, folder = zoo[arch]["forms"][form]
    in_memory = load_victim((model, tokenizer))
    reloaded = load_victim(str(folder))
    assert reloaded.kind == ("classifier" if form == "full" else "adapter")
    assert reloaded.num_labels == 3 and reloaded.head_pooling == HEAD_READS[arch]
    np.testing.assert_allclose(reloaded.logits(TEXTS), in_memory.logits(TEXTS), atol=1e-5)
    np.testing.assert_allclose(reloaded.head_inputs(TEXTS), in_memory.head_inputs(TEXTS), atol=1e-5)
    # Batching (padding on the side the head needs) changes nothing: each text alone gives the same.
    alone = np.concatenate([reloaded.logits([t]) for t in TEXTS])
    np.testing.assert_allclose(reloaded.logits(TEXTS, batch_size=5), alone, atol=1e-4)
    assert reloaded.base_fingerprint == in_memory.base_fingerprint
    assert len(reloaded.base_fingerprint) == 64


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_vector_the_monitor_reads_is_the_head_input(zoo, arch, form):
    """The representation rule: the head applied to the head-input vector gives the victim's logits."""
    from peftshield.defenses.lmsanitator.monitor import PVMonitor

    model, tokenizer, folder = zoo[arch]["forms"][form]
    victim = load_victim(str(folder))
    logits, vectors = victim.outputs(TEXTS, head_input=True)
    with torch.no_grad():
        again = _head_logits(arch, victim.model, torch.tensor(vectors))
    np.testing.assert_allclose(again.numpy(), logits, atol=1e-5)
    # The monitor watches exactly that vector.
    monitor = PVMonitor(victim, torch.tensor(np.sign(vectors[:1])), threshold=0.8).fit([])
    np.testing.assert_allclose(monitor.pooled(TEXTS)[1], vectors, atol=1e-6)
    assert monitor.score(TEXTS[:1])[0] == 1.0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_input_matches_an_independent_computation(zoo, arch):
    """Full classifiers: the rule against the hidden states, and against a hook on the head's forward."""
    model, tokenizer, folder = zoo[arch]["forms"]["full"]
    victim = load_victim(str(folder))
    vectors = victim.head_inputs(TEXTS)
    seen = []
    handle = getattr(model, "score" if arch == "llama" else "classifier").register_forward_pre_hook(
        lambda _m, args: seen.append(args[0])
    )
    try:
        for i, text in enumerate(TEXTS):
            enc = tokenizer([text], return_tensors="pt")
            enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                out = model(**enc, output_hidden_states=True)
                last = out.hidden_states[-1][0]
                if arch == "bert":
                    expected = model.bert.pooler(last[None])[0]  # the pooler over [CLS]
                elif arch == "llama":
                    expected = last[-1]  # the last (non-padding: unpadded here) token
                else:
                    expected = last[0]  # the first token
            hooked = seen[-1][0]
            hooked = hooked if hooked.ndim == 1 else hooked[-1 if arch == "llama" else 0]
            np.testing.assert_allclose(vectors[i], expected.numpy(), atol=1e-5)
            np.testing.assert_allclose(vectors[i], hooked.numpy(), atol=1e-5)
    finally:
        handle.remove()


def test_peftshield_victims_read_their_recorded_pooling(tiny_bert, tmp_path):
    from peftshield.tuning.trainer import tune

    result = tune(tiny_bert, toy_examples(40), [], "lora", seed=0, progress=False)
    victim = load_victim(result)
    assert victim.kind == "peftshield" and victim.head_pooling == "mean"
    logits, vectors = victim.outputs(TEXTS, head_input=True)
    with torch.no_grad():
        out = victim.model(**victim.tokenizer(TEXTS, return_tensors="pt", padding=True))
    np.testing.assert_allclose(vectors, out["pooled"].numpy(), atol=1e-5)
    saved = result.save(tmp_path / "victim")
    again = load_victim(str(saved))
    np.testing.assert_allclose(again.logits(TEXTS), logits, atol=1e-5)
    assert again.base_fingerprint == result.backbone_fingerprint


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad(zoo, tmp_path_factory) -> dict:
    """Broken victims, one per refusal of the issue's "Bad input" list."""
    import safetensors.torch
    from transformers import ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("bad")
    bert = zoo["bert"]["forms"]["lora"][2]

    def copy(name: str) -> Path:
        return Path(shutil.copytree(bert, root / name))

    cases: dict[str, tuple[list[str], str]] = {}
    missing = copy("missing-base")
    config = json.loads((missing / "adapter_config.json").read_text())
    (missing / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "/no/such/base"})
    )
    cases["base missing"] = ([str(missing)], "is missing")
    cases["base of another architecture"] = (
        [str(bert), "--base", str(zoo["roberta"]["base"])],
        "does not fit",
    )
    from peftshield.models.tiny import build_tiny_bert

    wider = build_tiny_bert(root / "wider-bert", hidden_size=48)
    cases["base of another shape"] = ([str(bert), "--base", str(wider)], "does not fit")
    vit = root / "vit"
    vit_config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    save_tiny(vit, ViTModel(vit_config), zoo["bert"]["forms"]["full"][1])
    cases["base not a classifier"] = ([str(bert), "--base", str(vit)], "not a classifier")
    task = copy("causal-task")
    (task / "adapter_config.json").write_text(json.dumps({**config, "task_type": "CAUSAL_LM"}))
    cases["task type"] = ([str(task)], "task type CAUSAL_LM")
    cases["no classification head"] = ([str(zoo["bert"]["base"])], "no classification head")
    headless = copy("headless")
    weights = safetensors.torch.load_file(str(headless / "adapter_model.safetensors"))
    safetensors.torch.save_file(
        {k: v for k, v in weights.items() if "classifier" not in k},
        str(headless / "adapter_model.safetensors"),
    )
    cases["modules_to_save head absent"] = ([str(headless)], "saved no classification head")
    prefix_model, _ = tiny_adapter(zoo["bert"]["base"], "bert", "prefix")
    prefix_model.save_pretrained(root / "prefix")
    cases["prefix tuning cannot run"] = ([str(root / "prefix")], "cannot run")
    return cases


CASES = (
    "base missing",
    "base of another architecture",
    "base of another shape",
    "base not a classifier",
    "task type",
    "no classification head",
    "modules_to_save head absent",
    "prefix tuning cannot run",
)


@pytest.mark.parametrize("case", CASES)
def test_bad_victims_are_one_line_errors(bad, case):
    args, message = bad[case]
    base = args[args.index("--base") + 1] if "--base" in args else None
    with pytest.raises(PeftshieldError, match=message) as caught:
        load_victim(args[0], base=base)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("case", CASES)
def test_bad_victims_exit_2_and_write_nothing(bad, case, psim_folder, tmp_path, capsys):
    args, message = bad[case]
    texts = tmp_path / "texts.csv"
    texts.write_text("text\na good film\n", encoding="utf-8")
    victim = ["--victim", *args]
    commands = {
        "guard": [
            "guard",
            "predict",
            *victim,
            "--detector",
            psim_folder,
            "--input",
            texts,
            "--output",
            tmp_path / "o.jsonl",
        ],
        "monitor": [
            "monitor",
            "fit",
            *victim,
            "--pvs",
            tmp_path / "none.safetensors",
            "--clean",
            texts,
            "--out",
            tmp_path / "monitor",
        ],
        "baseline": [
            "baseline",
            "fit",
            "--defense",
            "strip",
            *victim,
            "--clean",
            texts,
            "--out",
            tmp_path / "strip",
        ],
    }
    for name, command in commands.items():
        code, out, err = run_cli(command, capsys)
        assert code == 2, (name, err)
        assert out == "" and err.startswith("peftshield: error:") and message in err, (name, err)
        assert err.count("\n") == 1, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.csv"]


# -- every defence on a foreign victim ------------------------------------------------------------


@pytest.fixture(scope="module")
def psim_folder(zoo, toy_csv, tmp_path_factory) -> str:
    """``psim fit --victim ADAPTER``: PSIM on the adapter's base with a head of its shape (CLI)."""
    out = tmp_path_factory.mktemp("psim") / "psim"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "psim",
                "fit",
                "--victim",
                str(zoo["bert"]["forms"]["lora"][2]),
                "--corpus",
                toy_csv,
                "--max-train",
                "60",
                "--target-frr",
                "0.1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    return str(out)


def test_psim_for_a_foreign_victim_records_and_checks_its_base(zoo, psim_folder, tmp_path, capsys):
    from peftshield.defenses.base import load_detector
    from peftshield.defenses.guard import Guard

    folder = zoo["bert"]["forms"]["lora"][2]
    victim = load_victim(str(folder))
    psim = load_detector(psim_folder)
    assert psim.backbone_fingerprint_ == victim.base_fingerprint
    assert psim.num_labels_ == 3 and psim.pooling == "pooler"
    decisions = Guard(victim, psim).predict(TEXTS)
    assert len(decisions) == len(TEXTS)
    labels = victim.logits(TEXTS).argmax(-1)
    assert all(d.rejected or d.label == int(y) for d, y in zip(decisions, labels, strict=True))
    # The same adapter on another base (same shapes, other weights) is refused in one line.
    other = build_tiny_base(tmp_path / "other-base", "bert", seed=7)
    with pytest.raises(PeftshieldError, match="fitted on another backbone"):
        Guard(load_victim(str(folder), base=str(other)), psim)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    code, out, err = run_cli(
        [
            "guard",
            "predict",
            "--victim",
            folder,
            "--base",
            other,
            "--detector",
            psim_folder,
            "--input",
            texts,
        ],
        capsys,
    )
    assert code == 2 and "fitted on another backbone" in err and err.count("\n") == 1
    # The CLI guard reads the adapter folder directly.
    code, out, err = run_cli(
        ["guard", "predict", "--victim", folder, "--detector", psim_folder, "--input", texts], capsys
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS and all("psim" in r["scores"] for r in rows)


def test_psim_on_a_first_token_victim_reads_the_first_token(zoo):
    from peftshield.defenses.psim import PSIMDetector

    victim = load_victim(str(zoo["roberta"]["forms"]["prompt"][2]))
    psim = PSIMDetector.for_victim(victim, threshold="calibrated", target_frr=0.1)
    assert psim.pooling == "cls" and psim.num_labels == 3
    psim.fit([e.text for e in toy_examples(50)])
    assert psim.backbone_fingerprint_ == victim.base_fingerprint
    assert psim.module_.model.base_model.model.pooling == "cls"


def test_monitor_and_purge_watch_a_foreign_victim(zoo, tmp_path, capsys):
    from safetensors.torch import save_file

    from peftshield.defenses.base import load_detector
    from peftshield.defenses.lmsanitator.purge import Purger

    folder = zoo["llama"]["forms"]["lora"][2]
    victim = load_victim(str(folder))
    flagged = "the plot was very dull and the ending was long"
    pv = torch.tensor(np.sign(victim.head_inputs([flagged])), dtype=torch.float32)
    save_file({"pvs": pv}, str(tmp_path / "pvs.safetensors"))
    fit = [
        "monitor",
        "fit",
        "--victim",
        folder,
        "--pvs",
        tmp_path / "pvs.safetensors",
        "--out",
        tmp_path / "m",
    ]
    code, _, err = run_cli([*fit, "--clean", "dev"], capsys)
    assert code == 2 and "--clean dev reads the dev split" in err  # a foreign victim records no split
    clean = tmp_path / "clean.csv"
    clean.write_text("text\na good film\nbad\n", encoding="utf-8")
    code, out, err = run_cli([*fit, "--clean", clean, "--t-match", "0.9"], capsys)
    assert code == 0, err
    monitor = load_detector(tmp_path / "m")
    assert monitor.backbone_fingerprint_ is None or monitor.backbone_fingerprint_ == victim.base_fingerprint
    batch = monitor.run([flagged, "a good film"])
    assert batch.flags[0] and batch.scores[0] == 1.0
    np.testing.assert_array_equal(batch.labels, victim.logits([flagged, "a good film"]).argmax(-1))
    purged = Purger(monitor).purge([flagged])[0]
    assert purged.flagged and purged.removed and len(purged.text.split()) < len(flagged.split())


def test_baselines_take_foreign_victims(zoo, tmp_path, capsys):
    from peftshield.defenses.base import load_detector
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.strip import STRIPDetector

    clean = [e.text for e in toy_examples(60)]
    folder = zoo["mpnet"]["forms"]["ptuning"][2]
    strip = STRIPDetector(str(folder), repeat=3, target_frr=0.1).fit(clean)
    assert strip.score(TEXTS).shape == (len(TEXTS),)
    assert strip.backbone_fingerprint_ == load_victim(str(folder)).base_fingerprint
    strip.save(tmp_path / "strip")
    np.testing.assert_allclose(load_detector(tmp_path / "strip").score(TEXTS), strip.score(TEXTS), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rap = RAPDetector(str(zoo["roberta"]["forms"]["full"][2]), rap_word="mn", epochs=1, target_frr=0.1)
        rap.fit(clean)
    assert np.isfinite(rap.score(TEXTS)).all()
    texts = tmp_path / "clean.csv"
    texts.write_text("text\n" + "\n".join(clean) + "\n", encoding="utf-8")
    code, _, err = run_cli(
        [
            "baseline",
            "fit",
            "--defense",
            "strip",
            "--victim",
            zoo["llama"]["forms"]["prompt"][2],
            "--clean",
            texts,
            "--set",
            "repeat=2",
            "--quiet",
            "--out",
            tmp_path / "strip-cli",
        ],
        capsys,
    )
    assert code == 0, err


def test_onion_corrects_a_foreign_victim(zoo, tmp_path):
    from peftshield.defenses.onion import ONIONDetector, sanitized_predictions
    from peftshield.models.tiny_lm import build_tiny_llama

    lm = build_tiny_llama(tmp_path / "lm")
    onion = ONIONDetector(lm=str(lm), threshold="calibrated", target_frr=0.2)
    onion.fit([e.text for e in toy_examples(30)])
    victim = load_victim(str(zoo["bert"]["forms"]["prompt"][2]))
    batch = sanitized_predictions(victim, onion, TEXTS)
    np.testing.assert_array_equal(batch.pred, victim.logits(batch.texts).argmax(-1))


# -- the public API -------------------------------------------------------------------------------


def test_import_peftshield_is_cheap_and_lazy():
    code = (
        "import sys, peftshield\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        "names = ['scan', 'ScanResult', 'Guard', 'PSIMDetector', 'PVMonitor', 'STRIPDetector',\n"
        "         'RAPDetector', 'ONIONDetector', 'load_victim', 'load_detector', 'load_splits', 'tune',\n"
        "         'poison']\n"
        "assert sorted(names) == sorted(n for n in peftshield.__all__ if n != '__version__')\n"
        "print([callable(getattr(peftshield, n)) for n in names].count(True))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "13"


def test_readme_lora_adapter_example_runs(zoo, psim_folder, tmp_path, monkeypatch):
    """The README's "I have a LoRA adapter made with peft" example, on the tiny adapter and data."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("### I have a LoRA adapter made with peft")
    block = readme[
        readme.index("```python", start) + len("```python") : readme.index(
            "```", readme.index("```python", start) + 9
        )
    ]
    lines = [line for line in block.strip().splitlines() if line.strip()]
    assert len(lines) <= 12, "the example should stay about ten lines"
    # The example's names for the user's files, pointed at the tiny ones.
    import csv

    corpus = tmp_path / "my-clean-texts.csv"
    with open(corpus, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for e in toy_examples(80, seed=3):
            writer.writerow([e.text, e.label])
    shutil.copytree(zoo["bert"]["forms"]["lora"][2], tmp_path / "my-lora-adapter")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    decisions = namespace["decisions"]
    assert len(decisions) == 2 and all(hasattr(d, "rejected") for d in decisions)
