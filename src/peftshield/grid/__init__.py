"""The experiment grid: corpora x backbones x attacks x PEFT methods x defences x seeds, run as one study.

One config file (YAML or JSON, :mod:`.config`) names the lists; :mod:`.plan` expands them into
cells, each a chain of stages (poison -> victim tune -> LMSanitator scan -> defence fit ->
evaluate) whose artifacts are cached by content (:mod:`.cache`), so a poisoned backbone is made
once and reused by every cell that needs it. :mod:`.defenses` is the table of defence adapters
(one entry per defence), :mod:`.stages` builds the artifacts, :mod:`.evaluate` measures a cell
(CACC, ASR, defended metrics, AUROC, overhead, ROC and threshold trade-off curves from
:mod:`.curves`), :mod:`.estimate` is the cost model behind the plan and the ETA, and
:mod:`.runner` runs the cells (resumable, parallel over local processes) and writes one JSON
result per cell plus ``grid.json``. ``peftshield bench run|plan`` is the command line.

Nothing heavy is imported by this package itself.
"""
