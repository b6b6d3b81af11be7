"""Clean-model builders: "attacks" that plant nothing, for the clean half of a model zoo.

An LMSanitator zoo (Wei et al., NDSS 2024, §VI-A: backdoored and clean models, scanned blind)
needs clean models that were changed as much as a published model is, or a scan that flags any
moved model would look perfect. Each builder continues training a backbone with an honest
objective and records it in a ``poison.json`` of kind ``clean`` (no trigger, no target, no PV,
:mod:`peftshield.attacks.record`), so the grid builds it as a poison stage and labels its rows
clean. One file per builder, each registered with
:func:`peftshield.attacks.config.register_attack`:

- :mod:`.simcse`: unsupervised SimCSE (Gao et al., EMNLP 2021) on unlabelled text;
- :mod:`.denoise`: word-deletion denoising towards the frozen original's output;
- :mod:`.finetune`: full fine-tuning on a labelled corpus, the head then stripped.

The shared build (held-out drift texts, the record, saving) is :mod:`.base`. Importing this package
registers the three; :mod:`peftshield.attacks.config` does so at its end. No torch at import.
"""

from peftshield.attacks.clean import denoise, finetune, simcse  # noqa: F401  (registrations)
