"""Errors of the safety checks; every message says what was wrong and how to fix it."""


class SafetyInputError(ValueError):
    """Bad input to a safety check (a malformed prompt file, an empty gallery, mismatched embeddings)."""


class DetectorMissingError(FileNotFoundError):
    """A detector's model file is missing; the message names the file, where it was looked for and the fix."""


class ProtectedIdentityError(PermissionError):
    """An identity matches the protected gallery and was refused."""
