"""Protected identities with the real YuNet + SFace models on real photos: the gallery, the privacy check and the
opt-in PuLID guard ``refuse_protected_identity``."""

import numpy as np
import pytest
import torch
from face_test_assets import real_photos
from onestep.pulid.face_analysis import YuNetSFaceAnalyzer, detect_faces
from onestep.safety.errors import ProtectedIdentityError, SafetyInputError
from onestep.safety.identity import (
    IdentityGallery,
    PrivacyCheck,
    find_faces,
    gallery_from_photos,
    load_gallery,
    read_photo_folder,
    refuse_protected_identity,
    save_gallery,
)
from PIL import Image


@pytest.fixture(scope="module")
def analyzer():
    return YuNetSFaceAnalyzer()


@pytest.fixture(scope="module")
def photos():
    return real_photos()


@pytest.fixture(scope="module")
def gallery(analyzer, photos):
    return gallery_from_photos(analyzer, {"hanks": photos["hanks"]})


def embedding_of(analyzer, image):
    return analyzer.embed(image, max(detect_faces(analyzer, image, "photo"), key=lambda f: f.area))


def test_same_person_matches_and_others_do_not(analyzer, photos, gallery):
    check = PrivacyCheck(analyzer, gallery)
    same = check.check_faces(photos["hanks_again"], find_faces(analyzer, photos["hanks_again"]))
    assert same.faces == 1 and same.flagged and same.match == "hanks" and same.similarity > 0.7
    other = check.check_faces(photos["astronaut"], find_faces(analyzer, photos["astronaut"]))
    assert other.faces == 1 and not other.flagged and other.similarity < 0.3
    crowd = check.check_faces(photos["t1"], find_faces(analyzer, photos["t1"]))
    assert crowd.faces == 6 and not crowd.flagged


def test_images_without_faces_are_counted_not_dropped(analyzer, gallery):
    gray = np.full((256, 256, 3), 128, np.uint8)
    finding = PrivacyCheck(analyzer, gallery).check_faces(gray, find_faces(analyzer, gray))
    assert finding.faces == 0 and finding.similarity is None and not finding.flagged


def test_the_pulid_guard_refuses_a_protected_identity(analyzer, photos, gallery):
    with pytest.raises(ProtectedIdentityError, match=r"protected identity 'hanks' \(cosine similarity 0\.9"):
        refuse_protected_identity(embedding_of(analyzer, photos["hanks_again"]), gallery, 0.363)
    name, similarity = refuse_protected_identity(torch.from_numpy(embedding_of(analyzer, photos["astronaut"]))[None],
                                                 gallery, 0.363, face_model="YuNet + SFace")
    assert name == "hanks" and similarity < 0.3
    with pytest.raises(SafetyInputError, match="512 values but the protected gallery holds 128-d"):
        refuse_protected_identity(np.ones(512), gallery)
    with pytest.raises(SafetyInputError, match="built with YuNet \\+ SFace but the identity comes from InsightFace"):
        refuse_protected_identity(np.ones(128), gallery, face_model="InsightFace (antelopev2)")


def test_photo_folder_gallery_skips_faceless_photos_and_saves(analyzer, photos, tmp_path):
    folder = tmp_path / "protected"
    folder.mkdir()
    Image.fromarray(photos["hanks"]).save(folder / "hanks.png")
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(folder / "wall.jpg")
    (folder / "notes.txt").write_text("not an image")
    gallery = gallery_from_photos(analyzer, read_photo_folder(folder))
    assert gallery.names == ["hanks"] and gallery.skipped == ["wall"] and gallery.dim == 128
    save_gallery(gallery, tmp_path / "g.safetensors")
    loaded = load_gallery(tmp_path / "g.safetensors")
    assert loaded.names == ["hanks"] and loaded.face_model == "YuNet + SFace"
    np.testing.assert_allclose(loaded.embeddings, gallery.embeddings)


def test_empty_galleries_are_errors(analyzer, tmp_path):
    with pytest.raises(SafetyInputError, match="no images"):
        read_photo_folder(tmp_path)
    with pytest.raises(SafetyInputError, match="gallery is empty \\(1 photo\\(s\\) without a detectable face: wall"):
        gallery_from_photos(analyzer, {"wall": np.full((200, 200, 3), 90, np.uint8)})
    with pytest.raises(SafetyInputError, match="gallery is empty"):
        IdentityGallery(np.zeros((0, 128), np.float32), [], "x")
    with pytest.raises(SafetyInputError, match="not a safetensors file"):
        (tmp_path / "bad.safetensors").write_bytes(b"nope")
        load_gallery(tmp_path / "bad.safetensors")
