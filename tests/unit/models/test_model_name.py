"""The public id of a served model is a name: never the checkpoint's path on the server."""

from __future__ import annotations

from pathlib import Path

from tandem.models.model_name import served_model_name


def test_a_checkpoint_folder_is_named_by_its_last_component(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "llava-1.5-7b-hf"
    folder.mkdir(parents=True)
    assert served_model_name(str(folder)) == "llava-1.5-7b-hf"
    assert served_model_name(f"{folder}/") == "llava-1.5-7b-hf"
    assert served_model_name("/no/such/folder/tiny-llava") == "tiny-llava"


def test_a_hub_id_is_named_by_its_last_part() -> None:
    assert served_model_name("Qwen/Qwen2-VL-2B-Instruct") == "Qwen2-VL-2B-Instruct"
    assert served_model_name("gpt2") == "gpt2"


def test_the_shipped_default_model_has_a_name_of_its_own() -> None:
    from tandem.default_model import CHECKPOINT

    assert served_model_name(str(CHECKPOINT)) == "tandem-default"


def test_a_served_name_replaces_the_default(tmp_path: Path) -> None:
    assert served_model_name(str(tmp_path), "my-vlm") == "my-vlm"
