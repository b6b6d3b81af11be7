"""Weight-poisoning attacks: the threat that the defences are measured against.

- :mod:`~peftshield.attacks.config`: one validated config per attack and the ``ATTACKS`` registry
  (``clean-label``, ``badnets``, ``insent``, ``template``, ``por``, ``neuba``);
- :mod:`~peftshield.attacks.poisoning`: ``poison_dataset``, seeded data poisoning;
- :mod:`~peftshield.attacks.task_specific`: full fine-tuning on poisoned labelled data (PSIM);
- :mod:`~peftshield.attacks.task_agnostic`: POR and NeuBA output-vector backdoors (LMSanitator);
- :mod:`~peftshield.attacks.vectors`: the predefined output vectors (PVs);
- :mod:`~peftshield.attacks.poison`: ``poison``, the one entry point that picks the attack by name;
- :mod:`~peftshield.attacks.record`: ``poison.json``, the ground truth every poisoned folder holds.

Importing this package imports nothing heavy.
"""
