"""Model fingerprints: cheap, stable for the same files anywhere, different for other weights."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from mmmo.merging.models import model_fingerprint, read_tensor_headers


def test_fingerprint_is_content_not_location(random_family, tmp_path) -> None:
    base = random_family.base.ref
    fp = model_fingerprint(base)
    assert len(fp) == 16 and fp == random_family.base.fingerprint
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(base, copy)
    assert model_fingerprint(str(copy)) == fp
    prints = {model_fingerprint(s.ref) for s in random_family.sources}
    assert len(prints) == 3 and fp not in prints  # same headers and sizes, other weights


def test_fingerprint_same_in_a_fresh_process(random_family) -> None:
    code = ("import sys; from mmmo.merging.models import model_fingerprint; "
            "print(model_fingerprint(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, random_family.base.ref],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == random_family.base.fingerprint


def test_fingerprint_sees_config_and_weights(random_family, tmp_path) -> None:
    base = tmp_path / "m"
    shutil.copytree(random_family.base.ref, base)
    fp = model_fingerprint(str(base))
    data = bytearray((base / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one byte of the last tensor
    (base / "model.safetensors").write_bytes(bytes(data))
    changed = model_fingerprint(str(base))
    assert changed != fp
    (base / "config.json").write_text((base / "config.json").read_text().replace(
        '"rope_theta"', '"rope_theta_x"'))
    assert model_fingerprint(str(base)) != changed


def test_hub_ids_use_commits() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert model_fingerprint("org/model", revision=commit) == model_fingerprint(
        "org/model", revision=commit)
    assert model_fingerprint("org/model", revision=commit) != model_fingerprint(
        "org/other", revision=commit)
    assert model_fingerprint("org/model", revision="v1.0") != model_fingerprint(
        "org/model", revision="v2.0")
    with pytest.raises(FileNotFoundError):
        model_fingerprint("org/model-never-cached")


def test_headers(random_family) -> None:
    heads = read_tensor_headers(random_family.base.ref)
    assert heads["model.embed_tokens.weight"].shape == (96, 64)
    assert "lm_head.weight" in heads  # the random family is untied
