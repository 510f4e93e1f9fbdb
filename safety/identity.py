"""Protected identities: a gallery of face embeddings, the privacy check on generated images, and the opt-in
guard for the PuLID path (``refuse_protected_identity``).

Embeddings come from the face analysers of ``..pulid.face_analysis`` (YuNet + SFace: 128-d; InsightFace antelopev2:
raw 512-d glintr100). A gallery is tied to the recogniser that made it: embeddings of different recognisers are
not comparable, and mixing them is an error.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..pulid.face_analysis import DET_SIZES, FaceAnalyzer, NoFaceError, detect_faces
from ..pulid.similarity import largest_face_embedding
from .errors import ProtectedIdentityError, SafetyInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
EMBEDDING_SUFFIX = ".safetensors"
METADATA_NAMES, METADATA_MODEL = "onestep.safety.names", "onestep.safety.face_model"
# Default cosine thresholds: OpenCV's published SFace threshold (0.363); ~0.4 is common for ArcFace glintr100.
SFACE_THRESHOLD = 0.363


@dataclass
class IdentityGallery:
    """Unit-length embeddings [N, D] of protected identities, their names, and the recogniser that made them."""

    embeddings: np.ndarray
    names: list[str]
    face_model: str
    skipped: list[str] = field(default_factory=list)  # photos without a face, reported by the loader

    def __post_init__(self):
        if len(self.names) == 0 or self.embeddings.size == 0:
            raise SafetyInputError("the protected-identity gallery is empty: give at least one photo with a face "
                                   "or one saved embedding.")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.names):
            raise SafetyInputError(f"gallery embeddings must be [N, D] with one name each; got "
                                   f"{tuple(self.embeddings.shape)} for {len(self.names)} names.")
        self.embeddings = unit(self.embeddings.astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (cosine similarity becomes a dot product)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cosine_similarities(embedding: np.ndarray, gallery: IdentityGallery) -> np.ndarray:
    """Cosine similarity of one embedding to every gallery identity (ArcFace / SFace verification score)."""
    embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if embedding.shape[0] != gallery.dim:
        raise SafetyInputError(
            f"the embedding has {embedding.shape[0]} values but the protected gallery holds {gallery.dim}-d "
            f"embeddings from {gallery.face_model}: build the gallery with the same face model as the one that "
            f"made the embedding (YuNet + SFace: 128-d, InsightFace antelopev2: 512-d)."
        )
    return gallery.embeddings @ unit(embedding)


def best_match(embedding: np.ndarray, gallery: IdentityGallery) -> tuple[str, float]:
    """The gallery identity most similar to ``embedding`` and its cosine similarity."""
    similarities = cosine_similarities(embedding, gallery)
    index = int(np.argmax(similarities))
    return gallery.names[index], float(similarities[index])


def refuse_protected_identity(embedding, gallery: IdentityGallery, threshold: float = SFACE_THRESHOLD,
                              face_model: str | None = None) -> tuple[str, float]:
    """Opt-in guard for identity injection: raise ``ProtectedIdentityError`` when ``embedding`` matches a
    protected identity (cosine >= threshold); else return the closest (name, similarity) for logging.

    ``embedding``: one face's recognition vector ([D] or [1, D], numpy or torch; raw or normalised), made by the
    same recogniser as the gallery. ``face_model``: the recogniser's name, checked against the gallery's when given.
    """
    if face_model is not None and face_model != gallery.face_model:
        raise SafetyInputError(
            f"the protected gallery was built with {gallery.face_model} but the identity comes from {face_model}: "
            f"rebuild the gallery (OneStep Protected Identities) with {face_model}."
        )
    if hasattr(embedding, "detach"):
        embedding = embedding.detach().float().cpu().numpy()
    name, similarity = best_match(np.asarray(embedding), gallery)
    if similarity >= threshold:
        raise ProtectedIdentityError(
            f"refused: the reference face matches the protected identity '{name}' (cosine similarity "
            f"{similarity:.3f} >= threshold {threshold:.3f}). Use another reference photo, or remove '{name}' "
            f"from the protected gallery if you have the right to use this identity."
        )
    return name, similarity


def gallery_from_photos(analyzer: FaceAnalyzer, photos: dict[str, np.ndarray],
                        det_sizes=DET_SIZES) -> IdentityGallery:
    """One embedding per photo (its largest face), named after the photo; photos without a face are listed in
    ``skipped``. All photos faceless (or none given) is an error."""
    names, embeddings, skipped = [], [], []
    for name, image in photos.items():
        try:
            embeddings.append(largest_face_embedding(analyzer, image, name, det_sizes))
        except NoFaceError:
            skipped.append(name)
            continue
        names.append(name)
    if not names:
        found = f" ({len(skipped)} photo(s) without a detectable face: {', '.join(skipped)})" if skipped else ""
        raise SafetyInputError(f"the protected-identity gallery is empty{found}: give clear, frontal photos with "
                               f"one face each.")
    return IdentityGallery(np.stack(embeddings), names, analyzer.name, skipped)


def read_photo_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """RGB uint8 arrays of the image files directly in ``folder``, keyed by file stem."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise SafetyInputError(f"no folder at {folder}: give a folder of reference photos (one person per photo).")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SafetyInputError(f"the protected-identity gallery is empty: no images ({kinds}) in {folder}.")
    return {path.stem: np.asarray(Image.open(path).convert("RGB")) for path in paths}


def gallery_bytes(gallery: IdentityGallery) -> bytes:
    """The gallery as safetensors bytes: tensor ``embeddings``, names and face model in the metadata."""
    from safetensors.numpy import save

    return save({"embeddings": gallery.embeddings},
                metadata={METADATA_NAMES: json.dumps(gallery.names), METADATA_MODEL: gallery.face_model})


def save_gallery(gallery: IdentityGallery, path: str | Path) -> None:
    """Write ``gallery_bytes`` to ``path`` (the node writes them atomically, 0644, through nodes/files.py)."""
    Path(path).write_bytes(gallery_bytes(gallery))


def load_gallery(path: str | Path) -> IdentityGallery:
    """A gallery saved by ``save_gallery`` (or any safetensors with ``embeddings`` [N, D] and optional names)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SafetyInputError(f"no saved embeddings at {path}.")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            if "embeddings" not in handle.keys():
                raise SafetyInputError(f"{path.name} has no 'embeddings' tensor (found {list(handle.keys())}): save "
                                       f"galleries with OneStep Protected Identities.")
            embeddings = handle.get_tensor("embeddings")
    except SafetyInputError:
        raise
    except Exception as error:
        raise SafetyInputError(f"{path.name} is not a safetensors file of embeddings ({error}).") from None
    embeddings = embeddings.reshape(1, -1) if embeddings.ndim == 1 else embeddings
    names = json.loads(metadata.get(METADATA_NAMES, "null")) or [f"{path.stem}_{i}" for i in range(len(embeddings))]
    return IdentityGallery(embeddings, names, metadata.get(METADATA_MODEL, "unknown face model"))


@dataclass
class PrivacyFinding:
    faces: int
    match: str | None  # protected identity matched, if any
    similarity: float | None  # best similarity over faces and identities (None: no face)

    @property
    def flagged(self) -> bool:
        return self.match is not None


class PrivacyCheck:
    """Every detected face of an image against the protected gallery; flagged when any face matches."""

    name = "protected identities"

    def __init__(self, analyzer: FaceAnalyzer, gallery: IdentityGallery, threshold: float = SFACE_THRESHOLD):
        if analyzer.embedding_dim != gallery.dim:
            raise SafetyInputError(
                f"the gallery holds {gallery.dim}-d embeddings from {gallery.face_model} but {analyzer.name} makes "
                f"{analyzer.embedding_dim}-d ones: load the gallery with the same face model."
            )
        self.analyzer, self.gallery, self.threshold = analyzer, gallery, threshold

    def check_faces(self, image: np.ndarray, faces) -> PrivacyFinding:
        best_name, best = None, None
        for face in faces:
            name, similarity = best_match(self.analyzer.embed(image, face), self.gallery)
            if best is None or similarity > best:
                best_name, best = name, similarity
        matched = best_name if best is not None and best >= self.threshold else None
        return PrivacyFinding(len(faces), matched, best)


def find_faces(analyzer: FaceAnalyzer, image: np.ndarray, det_sizes=DET_SIZES) -> list:
    """All faces of an image (an empty list when none is found at any detection size)."""
    try:
        return detect_faces(analyzer, image, "image", det_sizes)
    except NoFaceError:
        return []
