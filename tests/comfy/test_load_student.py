"""OneStep Load Student on full-size SD1.5 files: ComfyUI and diffusers layouts, metadata, refusals."""


import comfy.utils
import folder_paths
import pytest
import torch
from onestep.distill.student_file import StudentFileError
from onestep.nodes.presets import STUDENT_INFO_KEY
from onestep.nodes.sampling import OneStepSigmas
from onestep.nodes.students import OneStepLoadStudent
from random_models import STUDENT_METADATA, ensure_random_sd15_files
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def students(tmp_path_factory, comfy_host):
    folder = tmp_path_factory.mktemp("diffusion_models")
    cached = ensure_random_sd15_files(comfy_host.REPO_ROOT / ".cache" / "models")
    (folder / "comfy_layout.safetensors").symlink_to(cached["unet"])
    (folder / "pickled.ckpt").write_bytes(b"\x80\x04 not safetensors")
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    yield folder, cached["unet"]
    folder_paths.folder_names_and_paths["diffusion_models"][0].remove(str(folder))


def test_comfy_layout_student_loads_with_its_preset(students):
    model, info = OneStepLoadStudent.execute("comfy_layout.safetensors").result
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model_options[STUDENT_INFO_KEY].preset == "sid-lsg"
    assert "preset=sid-lsg" in info and "teacher=random SD1.5 (stand-in)" in info
    sigmas = OneStepSigmas.execute(model, "auto", 1, 0.0).result[0]
    assert float(sigmas[0]) == pytest.approx(2.5017, abs=1e-3)


def test_diffusers_layout_student_loads_to_the_same_weights(students):
    folder, comfy_file = students
    reference, _ = OneStepLoadStudent.execute("comfy_layout.safetensors").result
    to_comfy = comfy.utils.unet_to_diffusers(reference.model.model_config.unet_config)
    comfy_weights = load_file(comfy_file)
    diffusers_file = folder / "diffusers_layout.safetensors"
    save_file({diffusers: comfy_weights[key] for diffusers, key in to_comfy.items() if key in comfy_weights},
              str(diffusers_file), metadata=STUDENT_METADATA)
    try:
        model, _ = OneStepLoadStudent.execute("diffusers_layout.safetensors").result
    finally:
        diffusers_file.unlink()  # 1.7 GB: CI machines share their disk
    expected = reference.model.diffusion_model.state_dict()
    loaded = model.model.diffusion_model.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key


def test_a_pickle_is_refused_before_anything_is_unpickled(students):
    with pytest.raises(StudentFileError, match="OneStep Load Student: 'pickled.ckpt' is not a safetensors file"):
        OneStepLoadStudent.execute("pickled.ckpt")


def test_the_list_holds_only_safetensors_and_a_bad_name_is_refused_when_queued(students):
    options = OneStepLoadStudent.GET_SCHEMA().inputs[0].options
    assert "comfy_layout.safetensors" in options and "pickled.ckpt" not in options
    assert OneStepLoadStudent.validate_inputs("comfy_layout.safetensors") is True
    pickled = OneStepLoadStudent.validate_inputs("pickled.ckpt")
    assert "'pickled.ckpt' is not a safetensors file" in pickled and "convert_student.py --allow-pickle" in pickled
    missing = OneStepLoadStudent.validate_inputs("gone.safetensors")
    assert missing.startswith("OneStep Load Student: 'gone.safetensors' is not among the files it can load")
    assert str(students[0]) in missing and "comfy_layout.safetensors" in missing
