"""peftshield: defend parameter-efficient fine-tuning against weight-poisoning backdoors.

The package implements the PSIM defence (Zhao et al., NAACL Findings 2024) and LMSanitator
(Wei et al., NDSS 2024), the classic input-level baselines, the weight-poisoning attacks they
defend against, and the measurements that compare them. Importing it has no side effects.
"""

__version__ = "0.1.0"
