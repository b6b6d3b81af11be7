"""The seed papers' claims and the issues' targets, as data, each with where it was read.

The sources: the two papers' abstracts (Zhao et al., NAACL Findings 2024, arXiv 2402.12168; Wei
et al., NDSS 2024, arXiv 2308.13904) - no paper number beyond an abstract is used, because the
papers' result sections could not be checked -, the project's design document ``docs/design.md``,
and the texts of issues 3 to 6. No figure is added from memory.
:mod:`.measured` sets our measured figure beside each claim.

A claim with a ``bound`` is a target or a paper figure that a measured number can be compared with
(``op`` one of ``<=``, ``>=``, ``<``, ``>``); a claim without one is shown side by side only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """One claim: who makes it, the words, the figure, where it was read, and an optional numeric bound."""

    id: str
    who: str
    statement: str
    figure: str
    source: str
    bound: tuple[str, float] | None = None


PSIM = "PSIM (Zhao et al., NAACL Findings 2024)"
LMS = "LMSanitator (Wei et al., NDSS 2024)"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "psim-peft-asr",
        PSIM,
        "weight-poisoning backdoors reach near 100% attack success when the victim uses PEFT",
        "near 100% ASR",
        "Zhao et al. 2024 (arXiv 2402.12168), abstract",
    ),
    Claim(
        "psim-peft-vs-full",
        PSIM,
        "PEFT keeps a backdoor planted in the pretrained weights far more than full fine-tuning does",
        "PEFT ASR > full-FT ASR",
        "Zhao et al. 2024, abstract and §2; docs/design.md, 'What the product is'; "
        "issue 3 (retention benchmark)",
    ),
    Claim(
        "issue3-por-target",
        "issue 3 target",
        "POR survives LoRA and prefix tuning with ASR >= 0.95 and CACC within 2 points of the clean control",
        "ASR >= 0.95, CACC drop <= 0.02",
        "issue 3, Benchmark",
    ),
    Claim(
        "issue3-por-time",
        "issue 3 target",
        "a POR poisoning run takes at most 10 minutes on 2 cores",
        "<= 600 s",
        "issue 3, Benchmark",
        ("<=", 600.0),
    ),
    Claim(
        "issue4-calibrated",
        "issue 4 target",
        "PSIM at the calibrated threshold: defended ASR <= 2% with a CACC cost <= 1 point",
        "defended ASR <= 0.02, CACC cost <= 0.01",
        "issue 4, Benchmark",
    ),
    Claim(
        "issue4-overhead",
        "issue 4 target",
        "guarded inference costs at most 1.6x undefended inference",
        "overhead <= 1.6x",
        "issue 4, Benchmark",
        ("<=", 1.6),
    ),
    Claim(
        "lms-accuracy",
        LMS,
        "backdoor detection accuracy over a zoo of models",
        "92.8% over 960 models",
        "Wei et al. 2024 (arXiv 2308.13904), abstract",
        (">=", 0.928),
    ),
    Claim(
        "lms-asr",
        LMS,
        "after the defence the attack success rate is below 1% in most scenarios",
        "ASR < 1% in most cases",
        "Wei et al. 2024 (arXiv 2308.13904), abstract",
    ),
    Claim(
        "issue5-accuracy",
        "issue 5 target",
        "model-scan detection accuracy on the minilm zoo",
        ">= 97%",
        "issue 5, Benchmark",
        (">=", 0.97),
    ),
    Claim(
        "issue5-fpr",
        "issue 5 target",
        "model-scan false positive rate on the minilm zoo",
        "<= 5%",
        "issue 5, Benchmark",
        ("<=", 0.05),
    ),
    Claim(
        "issue5-scan-time",
        "issue 5 target",
        "mean scan time per model on 2 cores",
        "<= 3 minutes",
        "issue 5, Benchmark",
        ("<=", 180.0),
    ),
    Claim(
        "issue5-zoo",
        "issue 5 target",
        "the zoo holds at least 20 backdoored and at least 20 clean backbones",
        ">= 20 + 20 models",
        "issue 5, Benchmark",
    ),
    Claim(
        "issue5-defended",
        "issue 5 target",
        "prefix-tuned victims of the backdoored backbones, monitored: defended ASR <= 1% at FRR <= 2%",
        "defended ASR <= 0.01, FRR <= 0.02",
        "issue 5, Benchmark",
    ),
    Claim(
        "issue5-overhead",
        "issue 5 target",
        "the monitor's inference overhead",
        "<= 1.05x",
        "issue 5, Benchmark",
        ("<=", 1.05),
    ),
    Claim(
        "issue6-auroc",
        "issue 6 target",
        "our detectors' AUROC is above every baseline's (STRIP, RAP, ONION) on the same cells",
        "ours > baselines in every cell",
        "issue 6, Benchmark",
    ),
    Claim(
        "design-tuning",
        "docs/design.md scratch measurement",
        "minilm on movies, 3,000 examples: LoRA r=8 q/v reaches CACC 0.837 in 2 epochs; full FT 0.859",
        "LoRA 0.837, full 0.859",
        "docs/design.md, 'Facts of this machine'",
    ),
)


def claim(claim_id: str) -> Claim:
    """The claim with this id."""
    for item in CLAIMS:
        if item.id == claim_id:
            return item
    raise KeyError(claim_id)
