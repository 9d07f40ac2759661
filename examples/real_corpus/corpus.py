"""A small real text corpus built at run time from the Python standard library's docstrings.

Every machine with Python has it, so the example needs no download. Each documented
module, class, function and method of the modules in :data:`MODULES` gives one
passage. A docstring whose first paragraph is a one-line summary followed by at
least one more paragraph gives a (question, positive) pair: the summary is the
question and the rest of the docstring is the positive passage. Other
docstrings of at least :data:`MIN_WORDS` words are passages without a question:
they are what the negatives are drawn from, along with the other positives.

The text is the Python Software Foundation's, under the PSF License Agreement
(the ``LICENSE`` file of every Python installation); nothing of it is stored in
this repository.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

#: Standard-library modules whose docstrings make the corpus (those that fail to
#: import on a machine are skipped and reported).
_MODULE_NAMES = """abc argparse ast asyncio base64 bisect calendar cmd codecs collections colorsys
    concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib
    email.message email.utils enum fileinput fnmatch fractions functools getopt gettext glob
    gzip hashlib heapq hmac html.parser http.client http.cookies http.server inspect io
    ipaddress itertools json locale logging logging.handlers mailbox mimetypes numbers
    operator optparse os pathlib pickle pkgutil platform plistlib pprint queue random re
    reprlib sched secrets selectors shelve shlex shutil signal smtplib socket socketserver
    statistics string struct subprocess tarfile tempfile textwrap threading time timeit
    tokenize traceback typing unittest unittest.mock urllib.parse urllib.request uuid
    warnings weakref xml.dom.minidom xml.etree.ElementTree zipfile zoneinfo"""
MODULES: tuple[str, ...] = tuple(_MODULE_NAMES.split())

#: Passages shorter than this (in words) are left out.
MIN_WORDS = 15
#: Summaries (questions) have this many words at least and at most.
QUESTION_WORDS = (4, 30)
#: Passages are cut at a sentence or line end before this many characters (the model
#: reads 128 tokens, roughly 500-600 characters of this kind of text).
MAX_CHARS = 600

_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*(->|-->)\s*.*)?$")


@dataclass
class Corpus:
    """Passages, questions and positive pairs.

    Attributes
    ----------
    passages : list of str
    origins : list of str
        The documented object of each passage, e.g. ``"shutil.copyfile"``.
    questions : list of str
        Distinct summaries.
    pairs : list of (int, int)
        (question index, passage index).
    skipped_modules : list of str
        Modules of :data:`MODULES` that did not import here.
    """

    passages: list[str] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    skipped_modules: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 of the texts and pairs, to tell whether cached embeddings still fit."""
        blob = json.dumps([self.passages, self.questions, self.pairs]).encode()
        return hashlib.sha256(blob).hexdigest()

    def duplicate_passages(self) -> int:
        """Passages whose text equals an earlier passage's."""
        return len(self.passages) - len(set(self.passages))


def _clip(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cut at the last sentence or line end before ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(". "), head.rfind(".\n"), head.rfind("\n"))
    if cut < limit // 2:
        cut = head.rfind(" ")
    return head[: cut + 1].rstrip()


def _paragraphs(doc: str) -> list[str]:
    paras = [p.strip() for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    # Drop leading signature lines such as "deque([iterable[, maxlen]]) --> deque object".
    while paras and all(_SIGNATURE.match(ln.strip()) for ln in paras[0].splitlines()):
        paras = paras[1:]
    return paras


def _documented(module: Any, name: str) -> list[tuple[str, Any]]:
    """The module, its public classes and functions defined in it, and their methods."""
    out = [(name, module)]
    seen: set[int] = set()
    # The public names, when the module lists them: its namespace alone can grow
    # as other modules are imported (lazily loaded attributes).
    names = getattr(module, "__all__", None) or list(vars(module))
    for attr in names:
        obj = getattr(module, attr, None)
        if attr.startswith("_") or obj is None or id(obj) in seen:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        home = (getattr(obj, "__module__", None) or "").lstrip("_")
        if not home.startswith(name.split(".")[0]):
            continue  # imported from elsewhere
        seen.add(id(obj))
        out.append((f"{name}.{attr}", obj))
        if inspect.isclass(obj):
            for mname, member in vars(obj).items():
                if mname.startswith("_"):
                    continue
                if isinstance(member, (classmethod, staticmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if member is None or id(member) in seen or not callable(member):
                    continue
                seen.add(id(member))
                out.append((f"{name}.{attr}.{mname}", member))
    return out


def build_corpus(modules: tuple[str, ...] = MODULES) -> Corpus:
    """Build the corpus from this interpreter's standard library.

    Returns
    -------
    Corpus
        The same for the same Python version; docstrings change a little from one
        Python release to the next.
    """
    corpus = Corpus()
    question_id: dict[str, int] = {}
    for name in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # a module this build of Python lacks
            corpus.skipped_modules.append(name)
            continue
        for origin, obj in _documented(module, name):
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            paras = _paragraphs(doc)
            if not paras:
                continue
            summary = " ".join(paras[0].split())
            rest = "\n\n".join(paras[1:])
            n_summary = len(summary.split())
            lo, hi = QUESTION_WORDS
            if lo <= n_summary <= hi and len(rest.split()) >= MIN_WORDS:
                passage = _clip(rest)
                q = question_id.setdefault(summary, len(question_id))
                corpus.pairs.append((q, len(corpus.passages)))
            else:
                passage = _clip("\n\n".join(paras))
                if len(passage.split()) < MIN_WORDS:
                    continue
            corpus.passages.append(passage)
            corpus.origins.append(origin)
    corpus.questions = list(question_id)
    return corpus


def load_corpus(path: str | os.PathLike[str]) -> Corpus:
    """Read a corpus written by ``python corpus.py --json PATH``."""
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d["pairs"] = [tuple(p) for p in d["pairs"]]
    return Corpus(**d)


def build_corpus_isolated(path: str | os.PathLike[str]) -> Corpus:
    """Build the corpus in a fresh interpreter without site-packages, and read it back.

    Installed packages can add methods to standard-library classes once imported
    (transformers does so to ``logging.Logger``), and lazily loaded attributes appear
    as other code imports them; a clean interpreter gives the same corpus whatever
    the calling process has imported.
    """
    subprocess.run(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), "--json", os.fspath(path)],
        check=True,
    )
    return load_corpus(path)


if __name__ == "__main__":
    c = build_corpus()
    if len(sys.argv) == 3 and sys.argv[1] == "--json":
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            json.dump(asdict(c), f)
    else:
        print(
            f"{len(c.passages)} passages, {len(c.questions)} questions, {len(c.pairs)} pairs, "
            f"{c.duplicate_passages()} duplicate passages; Python {sys.version.split()[0]}; "
            f"skipped: {c.skipped_modules or 'none'}"
        )
