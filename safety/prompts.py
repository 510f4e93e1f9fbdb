"""Prompt sets for the audit and the hard rule: prompts that sexualise minors are refused before generation.

A prompt file is JSON Lines, one object per line with at least ``prompt`` (text) and ``category`` (the T2ISafety
task or category it belongs to), as in the T2ISafety evaluation prompts; an optional ``person_neutral`` (bool)
marks prompts that name no gender, age or ethnicity, the ones the fairness check is computed on. Without that
field a prompt counts as person-neutral when its category names fairness (``fairness``, ``gender``, ``age``,
``race``), as in T2ISafety's fairness domain.
"""

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SafetyInputError

BUILTIN_PROMPTS = Path(__file__).resolve().parent / "data" / "builtin_prompts.jsonl"
FAIRNESS_CATEGORY = re.compile(r"fairness|gender|\bage\b|race|ethnic", re.IGNORECASE)

# The hard rule's word lists: minimal on purpose. A prompt is refused when it names a minor AND has a sexual
# term (or the toxicity model scores it as offensive); a few terms are refused on their own.
MINOR_TERMS = re.compile(
    r"\b(child|children|kids?|minors?|under-?age|teens?|teenagers?|teenage|pre-?teens?|toddlers?|infants?|"
    r"bab(y|ies)|girls?|boys?|schoolgirls?|schoolboys?|juveniles?|adolescents?|young(er)?\s+(girl|boy)s?|"
    r"([1-9]|1[0-7])[\s-]*(years?|yrs?|y/?o)([\s-]*old)?)\b",
    re.IGNORECASE,
)
SEXUAL_TERMS = re.compile(
    r"\b(nude|nudity|naked|nsfw|sex|sexual(ly)?|sexy|erotic|porn\w*|lewd|lingerie|undress\w*|topless|"
    r"seductive|provocative|fetish\w*|aroused|intimate|explicit|genitals?|breasts?)\b",
    re.IGNORECASE,
)
ALWAYS_REFUSED_TERMS = re.compile(r"\b(loli|lolicon|shota|shotacon|cp)\b", re.IGNORECASE)
MINOR_TOXICITY_THRESHOLD = 0.5
# Longest prompt taken (characters): CLIP reads 77 tokens per chunk and a prompt this long is already ~30 chunks;
# a 100 kB "prompt" (a pasted file) otherwise blocks the queue for minutes in tokenising and screening.
MAX_PROMPT_CHARS = 10_000
MAX_PROMPT_FILE_BYTES = 50_000_000


def prompt_length_problem(prompt: str) -> str | None:
    """None for a prompt of acceptable length, else what is wrong and the fix."""
    if len(prompt) > MAX_PROMPT_CHARS:
        return (f"the prompt is {len(prompt)} characters long, more than the {MAX_PROMPT_CHARS} accepted; shorten it "
                f"(a pasted file?)")
    return None


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; a binary, non-UTF-8 or huge file is refused with a message."""
    size = path.stat().st_size
    if size > MAX_PROMPT_FILE_BYTES:
        raise SafetyInputError(f"{path.name} is {size} bytes, more than the {MAX_PROMPT_FILE_BYTES} a prompt file may "
                               f"have; split it.")
    data = path.read_bytes()
    if b"\x00" in data:
        raise SafetyInputError(f"{path.name} is a binary file (it contains NUL bytes), not a text file of prompts; "
                               f"choose the prompt file (UTF-8 text).")
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise SafetyInputError(f"{path.name} is not UTF-8 text (byte {error.start}: {error.reason}); save it as "
                               f"UTF-8.") from None


@dataclass(frozen=True)
class PromptEntry:
    prompt: str
    category: str
    person_neutral: bool = False
    source: str = ""  # "file:line" for messages and the report


@dataclass(frozen=True)
class ScreenVerdict:
    blocked: bool
    reason: str = ""


def _entry_from_line(line: str, where: str) -> PromptEntry:
    expected = 'expected a JSON object such as {"prompt": "a photo of a lighthouse", "category": "benign"}'
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise SafetyInputError(f"{where}: not valid JSON ({error.msg}); {expected}.") from None
    if not isinstance(record, dict):
        raise SafetyInputError(f"{where}: found a {type(record).__name__}; {expected}.")
    for key in ("prompt", "category"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise SafetyInputError(f"{where}: '{key}' is missing or not a non-empty string; {expected}.")
    neutral = record.get("person_neutral")
    if neutral is not None and not isinstance(neutral, bool):
        raise SafetyInputError(f"{where}: 'person_neutral' must be true or false, got {neutral!r}.")
    if problem := prompt_length_problem(record["prompt"]):
        raise SafetyInputError(f"{where}: {problem}.")
    category = record["category"].strip()
    if neutral is None:
        neutral = bool(FAIRNESS_CATEGORY.search(category))
    return PromptEntry(record["prompt"].strip(), category, neutral, where)


def read_prompt_file(path: str | Path) -> list[PromptEntry]:
    """Entries of a JSON Lines prompt file; blank lines are skipped, any other bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise SafetyInputError(f"prompt file not found: {path}.")
    entries = []
    for number, line in enumerate(read_text_lines(path), start=1):
        if line.strip():
            entries.append(_entry_from_line(line, f"{path.name} line {number}"))
    if not entries:
        raise SafetyInputError(f"{path.name} holds no prompts: write one JSON object per line with 'prompt' and "
                               f"'category'.")
    return entries


def builtin_prompts() -> list[PromptEntry]:
    """The small prompt set written for this project (benign and person-neutral prompts; nothing explicit)."""
    return read_prompt_file(BUILTIN_PROMPTS)


def sexualises_minors(prompt: str, toxicity: float | None = None) -> bool:
    """The hard rule's test: a minor term with a sexual term (or a toxicity score >= 0.5), or a refused term."""
    if ALWAYS_REFUSED_TERMS.search(prompt):
        return True
    if not MINOR_TERMS.search(prompt):
        return False
    return bool(SEXUAL_TERMS.search(prompt)) or (toxicity is not None and toxicity >= MINOR_TOXICITY_THRESHOLD)


def screen_prompts(
    entries: Sequence[PromptEntry], toxicity: Callable[[list[str]], list[float]] | None = None
) -> list[ScreenVerdict]:
    """The hard rule over a whole prompt set, before anything is generated: one verdict per entry."""
    scores = list(toxicity([entry.prompt for entry in entries])) if toxicity is not None and entries else []
    verdicts = []
    for i, entry in enumerate(entries):
        score = scores[i] if scores else None
        if sexualises_minors(entry.prompt, score):
            verdicts.append(ScreenVerdict(True, "sexualises minors: refused before generation, never generated"))
        else:
            verdicts.append(ScreenVerdict(False))
    return verdicts


# Fashion-MNIST class names and the words that pick them, most specific first (t-shirt before shirt).
FMNIST_CLASS_WORDS = [
    (0, r"t-?shirts?|tees?|tops?"), (9, r"ankle[\s-]?boots?|boots?"), (1, r"trousers?|pants|jeans|slacks"),
    (2, r"pullovers?|sweaters?|jumpers?|hoodies?"), (3, r"dress(es)?|gowns?"), (4, r"coats?|jackets?|parkas?"),
    (5, r"sandals?|flip-?flops?"), (6, r"shirts?|blouses?"), (7, r"sneakers?|trainers?|running shoes?"),
    (8, r"bags?|handbags?|purses?|backpacks?"),
]


def class_label_for_prompt(prompt: str, unconditional: int) -> int:
    """The Fashion-MNIST class a prompt names (earliest mention wins), else ``unconditional``."""
    best = None
    for label, words in FMNIST_CLASS_WORDS:
        match = re.search(rf"\b({words})\b", prompt, re.IGNORECASE)
        if match and (best is None or match.start() < best[0] or (match.start() == best[0] and
                                                                   match.end() > best[1])):
            best = (match.start(), match.end(), label)
    return best[2] if best else unconditional
