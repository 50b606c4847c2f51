"""Homology: non-homologous models fail first, in one line, from configs and headers only."""

from __future__ import annotations

import pytest

from mmmo.errors import HomologyError
from mmmo.merging.homology import check_homology


def _no_weight_loading(monkeypatch) -> None:
    import safetensors
    import safetensors.torch
    import torch

    def refuse(*_a, **_k):
        raise AssertionError("check_homology must not load weights")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_family_is_homologous(family, random_family, monkeypatch) -> None:
    _no_weight_loading(monkeypatch)
    check_homology(family.base, family.sources)
    check_homology(random_family.base.ref, [s.ref for s in random_family.sources])


@pytest.mark.parametrize(("variant", "expected"), [
    ("shape", "tensor model.layers.1.mlp.up_proj.weight has shape [96, 64], the base has "
              "[128, 64]"),
    ("missing", "tensor model.layers.0.self_attn.v_proj.bias is missing"),
    ("config", "config field num_key_value_heads is"),
    ("vocab", "vocabulary differs from the base's at token 't6'"),
])
def test_mismatch_names_model_and_first_difference(variant, expected, random_family,
                                                   mismatched, monkeypatch) -> None:
    _no_weight_loading(monkeypatch)
    bad = str(getattr(mismatched, variant))
    sources = [random_family.sources[0].ref, bad, random_family.sources[1].ref]
    with pytest.raises(HomologyError) as info:
        check_homology(random_family.base.ref, sources)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"source '{variant}' ({bad}): ")
    assert expected in message


def test_materializer_checks_before_loading(random_family, mismatched, monkeypatch) -> None:
    from mmmo.merging import materialize

    def refuse(*_a, **_k):
        raise AssertionError("weights loaded before the homology check")

    monkeypatch.setattr(materialize.Materializer, "_load_resident", refuse)
    monkeypatch.setattr(materialize.Materializer, "_skeleton", refuse)
    with pytest.raises(HomologyError, match="up_proj"):
        materialize.Materializer(random_family.base, [str(mismatched.shape)], device="cpu")


def test_unreadable_model_is_a_homology_error(random_family, tmp_path) -> None:
    with pytest.raises(HomologyError, match="cannot be read"):
        check_homology(random_family.base.ref, [str(tmp_path / "nope")])
