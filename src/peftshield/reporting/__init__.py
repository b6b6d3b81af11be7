"""The benchmark report: tables, plots and a self-contained HTML / Markdown document.

Layers, each its own module: :mod:`.results` finds and reads the result files of docs/design.md
("Benchmark result files"); :mod:`.document` is a renderer-neutral document (sections, tables,
figures, text); :mod:`.svg` draws the plots as inline SVG with no plotting dependency;
:mod:`.render_markdown` and :mod:`.render_html` turn a document into text; one module per known
benchmark builds its section (:mod:`.tuning`, :mod:`.retention`, :mod:`.psim`,
:mod:`.lmsanitator`, :mod:`.comparison`, :mod:`.generic`); :mod:`.claims` holds the papers' and
the issues' claims as data and :mod:`.measured` sets our figures beside them; :mod:`.build`
assembles the report and writes it.
"""
