"""The guard as an HTTP service (``peftshield serve``, docs/design.md "serve/").

A victim behind its detectors, loaded once, answering ``POST /v1/classify`` with the guard's
decisions (PSIM, Zhao et al. 2024, §3 deployment; LMSanitator, Wei et al. 2024, §IV-C monitor and
purge). One concept per module: :mod:`.settings` (limits and batching), :mod:`.auth` (bearer
token), :mod:`.limits` (body size), :mod:`.metrics` (Prometheus text), :mod:`.audit` (the JSONL
audit log), :mod:`.batcher` (micro-batching), :mod:`.service` (the model work), :mod:`.app` (the
FastAPI application) and :mod:`.server` (uvicorn, signals). FastAPI and uvicorn come from the
optional ``serve`` extra and are imported only by :mod:`.app`, :mod:`.limits` and :mod:`.server`.
"""
