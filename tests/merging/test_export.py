"""Export: HF folder + mergekit YAML, reproduced by mergekit-yaml, atomic on every filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmmo.merging.export import MARKER, export, read_export


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def test_export_is_reproduced_by_mergekit_yaml(family, materializer, mergekit_runs,
                                               recipe_for, tmp_path) -> None:
    """The exported YAML is the one mergekit-yaml ran, and its weights are the export's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = recipe_for("dare_ties", family)
    target = tmp_path / "export"
    info = export(recipe, target, materializer=materializer)
    assert read_export(target) == info and info.route == "materializer"
    assert (target / "mergekit.yaml").read_text() == mergekit_runs.yamls["dare_ties"].read_text()
    for name in ("config.json", "tokenizer.json", "recipe.json", MARKER):
        assert (target / name).is_file(), name
    exported = _tensors(target)
    reference = mergekit_runs.wait("dare_ties")
    assert set(exported) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(exported[name], tensor), name
    model = AutoModelForCausalLM.from_pretrained(str(target))
    resident = dict(materializer.model.named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, resident[name]), name
    assert AutoTokenizer.from_pretrained(str(target)).get_vocab() == \
        materializer.tokenizer.get_vocab()
    assert info.sparsity is None or info.sparsity > 0


def test_mergekit_route_to_file_url_equals_in_memory(random_family, recipe_for,
                                                    tmp_path) -> None:
    from mmmo.merging.materialize import Materializer

    recipe = recipe_for("ties", random_family)
    url = f"file://{tmp_path}/nested/out"
    info = export(recipe, url)
    assert info.route == "mergekit" and read_export(url).recipe_id == recipe.recipe_id
    mat = Materializer(random_family.base, random_family.sources, device="cpu", check=False)
    state = mat.materialize(recipe).model.state_dict()
    exported = _tensors(tmp_path / "nested" / "out")
    assert set(exported) == {n for n, _ in mat.model.named_parameters()}
    for name, tensor in exported.items():
        assert torch.equal(tensor, state[name]), name
    with pytest.raises(FileExistsError):
        export(recipe, url)
    assert export(recipe, url, materializer=mat, overwrite=True).route == "materializer"
    assert not list((tmp_path / "nested").glob(".*partial*"))


def test_export_to_s3(materializer, family, recipe_for, s3_endpoint, s3_bucket,
                      tmp_path) -> None:
    import s3fs

    recipe = recipe_for("della", family)
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    url = f"{s3_bucket}/exports/{recipe.recipe_id}"
    info = export(recipe, url, materializer=materializer, storage_options=options)
    fs = s3fs.S3FileSystem(**options)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(url)}
    assert set(info.files) | {MARKER} == names
    assert read_export(url, storage_options=options) == info
    fs.get(f"{url}/model.safetensors", str(tmp_path / "model.safetensors"))
    exported = load_file(str(tmp_path / "model.safetensors"))
    resident = dict(materializer.model.named_parameters())
    for name, tensor in exported.items():
        assert torch.equal(tensor, resident[name]), name


def test_failed_export_leaves_nothing_complete(family, recipe_for, tmp_path) -> None:
    class Broken:
        current_recipe_id = None

        def materialize(self, recipe):
            raise RuntimeError("merge failed half way")

    target = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="half way"):
        export(recipe_for("ties", family), target, materializer=Broken())
    assert not target.exists() and read_export(target) is None
    assert not list(tmp_path.glob(".*partial*"))
