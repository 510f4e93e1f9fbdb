import comfy_host
import pytest

comfy_host.import_comfy()


@pytest.fixture(name="comfy_host", scope="session")
def comfy_host_fixture():
    return comfy_host


@pytest.fixture
def tiny_sd15():
    import comfy.supported_models

    return comfy_host.tiny_model_patcher(comfy.supported_models.SD15)
