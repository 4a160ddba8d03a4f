"""Every message the grader shows a student, in English and in Korean, from one catalogue.

The English stays where it is written (the known-mistake sentences in
``autograder/mistakes/<exercise>.py``, the f-strings of compare.py, worker_parent.py, worker.py,
runner.py and report.py); ``catalogue_ko.toml`` beside this file gives each one its Korean:

- ``[mistakes.<module>.<CONSTANT>]``: a known-mistake sentence (``module`` is an exercise's
  mistakes module, or ``compare`` for ``FLOAT32_PART``), ``en`` a copy of the constant (a test
  fails when the two drift apart, so a changed sentence cannot keep a stale translation);
- ``[inline.<id>]``: a sentence a hidden suite writes inline (``suite`` names the file);
- ``[templates.<id>]``: a message with placeholders (``{what}``, ``{expected}``, ...) for its
  dynamic parts, as the code builds it; ``slot`` (optional) makes it a fragment that only
  stands for the value of a placeholder of that name (a phase such as "while importing
  x.py", a crash such as "was killed by SIGTERM");
- ``[words]``: the report's single words (table headings, statuses).

``translate(message, "ko")`` gives the Korean of any message built from those: line by line,
a line is looked up as a sentence, then matched against each template (the most specific
first); a placeholder's value is translated in turn where it is itself a message (the
sentence after "This looks like a known mistake: "). Text the catalogue does not know (a
student's own exception message, a traceback, a test's name) stays as it is. The grader
decides everything on the English; translating is the last step of rendering a report.
"""
from __future__ import annotations

import os
import re
import string
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("catalogue_ko.toml")
LANGUAGES = ("en", "ko")

# How a placeholder's value is matched and rendered. (regex, mode); mode:
#   None        kept as it is (numbers, shapes, names, a student's text)
#   "text"      translated as a message in its own right where the catalogue knows it
#   "fragment"  translated by the fragments of its slot where one matches, else kept
#   "required"  must match a fragment of its slot, else the template does not match: keeps
#               generic templates ("{kind} {phase}: {message}") from matching any "a b: c"
#   ("list", separator, Korean separator): each item a message ("A; or B")
SLOTS: dict[str, tuple[str, object]] = {
    "mistake": (r".+", "text"),
    "mistakes": (r".+", ("list", "; or ", "; 또는 ")),
    "message": (r".*", "text"),
    "detail": (r".*", "text"),
    "last": (r".*", "text"),
    "hint": (r".+", "text"),
    "parts": (r".+", ("list", "; ", "; ")),
    "phase": (r".+?", "required"),
    "how": (r".+?", "required"),
    "running": (r".+?", "required"),
    "task": (r".+", "required"),
    "todo": (r".+", "required"),
    "target": (r".+?", "fragment"),
    "got": (r".+?", "fragment"),
    "reason": (r".+?", "fragment"),
    "kind": (r"[A-Za-z_][\w.]*", None),
    "module": (r"[\w.]+", None),
    "where": (r"[\w.:<>\[\]-]+", None),  # a place in code: attention.softmax, compare.py:120
    "test": (r"[\w.\-]+/\S+", None),
    "path": (r"result\S*", None),
    "count": (r"\d[\d,]*", None),
    "total": (r"\d[\d,]*", None),
    "n": (r"\d[\d,]*", None),
    "line": (r"\d+", None),
    "status": (r"-?\d+", None),
    "seconds": (r"\d[\d.e+-]*", None),
}
DEFAULT_SLOT = (r".+?", None)
MAX_DEPTH = 4  # a placeholder's value is a message at most this deep (no runaway recursion)
# lines longer than this stay as they are: the grader's own lines are far shorter, and a
# submission's endless exception message must not cost the report the time of matching it
MAX_LINE = 4000


@dataclass(frozen=True)
class Template:
    id: str
    en: str
    ko: str
    slot: str | None  # None: a whole line of a message; else a fragment for that placeholder
    regex: re.Pattern

    @property
    def specificity(self) -> int:
        """Literal characters: the more a template spells out, the earlier it is tried."""
        return sum(len(literal) for literal, *_ in string.Formatter().parse(self.en))


def placeholders(text: str) -> list[str]:
    """The placeholder names of a template, in order, repeats included."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def _pattern(en: str, fragments: dict[str, list[str]], named: bool = True, depth: int = 0) -> str:
    """The regex of a template. A "required" placeholder matches only what one of its slot's
    fragments matches (an alternation of theirs), so the regex itself finds the split of a
    line between placeholders ("{how} {phase}") that the fragments explain."""
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(en):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"catalogue template {en!r}: placeholder {{{name}}} is not a name")
        regex, mode = SLOTS.get(name, DEFAULT_SLOT)
        if mode == "required" and fragments.get(name) and depth < MAX_DEPTH:
            regex = "|".join(_pattern(f, fragments, named=False, depth=depth + 1) for f in fragments[name])
        if not named:
            parts.append(f"(?:{regex})")
        elif name in seen:  # the same value twice ("allowed {tol} + {tol}*|expected|")
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>{regex})")
    return "".join(parts)


@dataclass(frozen=True)
class Catalogue:
    sentences: dict[str, str]  # English -> Korean, exact (known mistakes, inline sentences)
    templates: tuple[Template, ...]  # whole lines, most specific first
    fragments: dict[str, tuple[Template, ...]]  # slot -> its fragments, most specific first
    words: dict[str, str]
    data: dict  # the parsed TOML, for the tests


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    # without its data file (a release that did not ship it) every message stays English
    data = tomllib.loads(DATA.read_text(encoding="utf-8")) if DATA.exists() else {}
    sentences: dict[str, str] = {}
    for module in data.get("mistakes", {}).values():
        for entry in module.values():
            sentences[entry["en"]] = entry["ko"]
    for entry in data.get("inline", {}).values():
        sentences[entry["en"]] = entry["ko"]
    lines, fragments, english = [], {}, {}
    for entry in data.get("templates", {}).values():
        if entry.get("slot"):
            english.setdefault(entry["slot"], []).append(entry["en"])
    for key, entry in data.get("templates", {}).items():
        regex = re.compile(_pattern(entry["en"], english), re.DOTALL)
        template = Template(key, entry["en"], entry["ko"], entry.get("slot"), regex)
        (fragments.setdefault(template.slot, []) if template.slot else lines).append(template)
    order = lambda t: -t.specificity  # noqa: E731
    return Catalogue(sentences=sentences, templates=tuple(sorted(lines, key=order)),
                     fragments={slot: tuple(sorted(ts, key=order)) for slot, ts in fragments.items()},
                     words=dict(data.get("words", {})), data=data)


def translate(message: str, lang: str = "en") -> str:
    """``message`` in ``lang``: unchanged for English (or an unknown language), else each line
    in Korean where the catalogue knows it (leading spaces kept: the report indents the
    known-mistake line)."""
    if lang != "ko" or not message:
        return message
    out = []
    for line in str(message).split("\n"):
        body = line.lstrip(" ")
        indent = line[:len(line) - len(body)]
        try:
            body = _message(body, 0) if len(body) <= MAX_LINE else body
        except Exception:  # noqa: BLE001 - a faulty catalogue entry costs the Korean of a line, never the report
            pass
        out.append(indent + body)
    return "\n".join(out)


def word(text: str, lang: str = "en") -> str:
    """A single word of the report (a column heading, a status) in ``lang``."""
    return catalogue().words.get(text, text) if lang == "ko" else text


def _message(text: str, depth: int) -> str:
    found = _known(text, depth)
    return text if found is None else found


def _known(text: str, depth: int) -> str | None:
    """The Korean of a whole message line, or None where the catalogue does not know it."""
    cat = catalogue()
    if text in cat.sentences:
        return cat.sentences[text]
    if depth >= MAX_DEPTH:
        return None
    return _apply(cat.templates, text, depth)


def _apply(templates, text: str, depth: int) -> str | None:
    for template in templates:
        match = template.regex.fullmatch(text)
        if match is None:
            continue
        values = {}
        for name, value in match.groupdict().items():
            rendered = _value(name, value, depth + 1)
            if rendered is None:
                break  # a required placeholder that no fragment explains: not this template
            values[name] = rendered
        else:
            return template.ko.format_map(values)
    return None


def _value(name: str, value: str, depth: int) -> str | None:
    mode = SLOTS.get(name, DEFAULT_SLOT)[1]
    if mode is None or depth > MAX_DEPTH:
        return value
    if mode == "text":
        return _message(value, depth)
    if isinstance(mode, tuple):  # a list: each item a fragment of this slot, or a message
        _, separator, ko_separator = mode
        fragments = catalogue().fragments.get(name, ())
        return ko_separator.join(_apply(fragments, item, depth) or _message(item, depth)
                                 for item in value.split(separator))
    found = _apply(catalogue().fragments.get(name, ()), value, depth)
    if found is None and mode == "fragment":
        found = catalogue().sentences.get(value, value)
    return found


def language(environ=None) -> str:
    """The student's language from the locale: "ko" where the first of LC_ALL, LC_MESSAGES
    and LANG that is set (POSIX's order) starts with "ko" (ko_KR.UTF-8), else "en"."""
    environ = os.environ if environ is None else environ
    for variable in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(variable)
        if value:
            return "ko" if value.lower().startswith("ko") else "en"
    return "en"


def hangul_ratio(text: str) -> float:
    """Hangul syllables among the letters of ``text`` (Latin and Hangul): how Korean it reads."""
    hangul = sum(1 for c in text if "\uac00" <= c <= "\ud7a3")
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    return hangul / (hangul + latin) if hangul + latin else 0.0


def release_text(keep) -> str:
    """The catalogue as a student release should ship it: every template and word, and only
    the sentences whose English ``keep(en)`` accepts (those the release's public checks can
    show, e.g. the strings recorded in exercises/checks/reference.pt). The whole catalogue
    holds every known mistake, and a mistake's sentence often states the right formula: one
    a student has not made is not theirs to read. TOML as ``tomllib`` reads it back."""
    data = catalogue().data
    quote = lambda text: '"' + (str(text).replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
                                .replace("\n", "\\n").replace("\t", "\\t")) + '"'
    out = ["# The Korean of the grader's messages (autograder/catalogue.py): the release's part of it."]
    for section in ("mistakes", "inline"):
        for key, entry in data.get(section, {}).items():
            entries = entry.items() if section == "mistakes" else [(None, entry)]
            for name, item in entries:
                if keep(item["en"]):
                    table = f"{section}.{quote(key)}" + (f".{quote(name)}" if name is not None else "")
                    out += ["", f"[{table}]"] + [f"{field} = {quote(value)}" for field, value in item.items()]
    for key, entry in data.get("templates", {}).items():
        out += ["", f"[templates.{quote(key)}]"] + [f"{field} = {quote(value)}" for field, value in entry.items()]
    out += ["", "[words]"] + [f"{quote(key)} = {quote(value)}" for key, value in data.get("words", {}).items()]
    return "\n".join(out) + "\n"
