"""LMSanitator (Wei et al., NDSS 2024, arXiv 2308.13904): PV mining, filtering, scan, monitor, purge.

Modules: :mod:`.measures` (scale-aware distance / diversity), :mod:`.mining` (soft-trigger PV
mining), :mod:`.filtering` (which candidates are PVs), :mod:`.calibration` (filter thresholds set
on clean backbones), :mod:`.scan` (model verdict, PV files, PV recovery), :mod:`.monitor`
(sign-pattern input monitor), :mod:`.purge` (word deletion until the monitor stops firing) and
:mod:`.evaluate` (defended ASR in the LMSanitator convention). Import what you need from the
submodules; this package imports nothing heavy by itself.
"""
