"""A larger real corpus: the docstrings of installed packages and of the standard library.

    PYTHONHASHSEED=0 python examples/real_corpus/packages.py            # print the counts
    PYTHONHASHSEED=0 python examples/real_corpus/packages.py --json out.json

Made the way ``corpus.py`` makes the standard-library corpus (the same
passages, summaries as questions, rest of the docstring as positive; its
:func:`corpus.build_corpus` does the work), but over every public submodule of
the packages in :data:`PACKAGES` that are installed here, plus
:data:`corpus.MODULES`. A function re-exported by several modules gives the
same passage several times; exact duplicate passages are merged into the
first, and the pairs follow them. Which modules import, and so the counts,
depend on the installation.

The text belongs to each package's authors, under each package's licence; it is
read from the user's own installation and nothing of it is stored here.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import re
import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import MODULES, Corpus, _documented, build_corpus, load_corpus

#: Installed packages whose public submodules are walked (missing ones are skipped).
_PACKAGE_NAMES = """numpy scipy pandas pyarrow torch datasets transformers sentence_transformers
    tokenizers huggingface_hub sklearn ray faiss tqdm hypothesis pytest _pytest matplotlib sympy
    networkx jinja2 requests urllib3 packaging fsspec yaml click attr pydantic"""
PACKAGES: tuple[str, ...] = tuple(_PACKAGE_NAMES.split())
#: Submodule name parts that are never walked (tests, entry points, vendored code).
_SKIP = "tests test testing conftest __main__ setup benchmarks _vendor vendored examples"
SKIP_PARTS = frozenset(_SKIP.split())
#: Most submodules taken from one package (the largest ones have thousands).
MAX_MODULES_PER_PACKAGE = 1200
#: An object's address in its repr, as some docstrings show default arguments.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _public(name: str) -> bool:
    parts = name.split(".")
    # the top-level name may be private (``_pytest``); its submodules may not
    return not any(p.startswith("_") or p in SKIP_PARTS for p in parts[1:])


def _readable(name: str) -> bool:
    """Whether ``name`` imports and :func:`corpus.build_corpus` can read all its docstrings.

    Lazily loading modules (transformers) raise on some attribute reads.
    """
    try:
        module = importlib.import_module(name)
        for _, obj in _documented(module, name):
            inspect.getdoc(obj)
    except BaseException:  # a module may exit or raise anything on import
        return False
    return True


def submodules(package: str, limit: int = MAX_MODULES_PER_PACKAGE) -> list[str]:
    """``package`` and its public submodules that import cleanly, in walk order.

    Parameters
    ----------
    package : str
        Importable top-level name.
    limit : int
        Most names returned.

    Returns
    -------
    list of str
        Empty when ``package`` does not import; without ``package`` itself when
        its own docstrings cannot be read.
    """
    # A package whose own namespace cannot be read (ray) may still have readable submodules.
    names = [package] if _readable(package) else []
    if package not in sys.modules:
        return names
    path = getattr(sys.modules[package], "__path__", None)
    if path is None:
        return names
    found = pkgutil.walk_packages(path, prefix=package + ".", onerror=lambda _: None)
    for info in found:
        if len(names) >= limit:
            break
        if _public(info.name) and _readable(info.name):
            names.append(info.name)
    return names


def _first_ids(texts: list[str]) -> tuple[list[str], list[int]]:
    """Distinct ``texts`` in first-seen order, and the index of each text among them."""
    keep: dict[str, int] = {}
    for t in texts:
        keep.setdefault(t, len(keep))
    return list(keep), [keep[t] for t in texts]


def dedupe(c: Corpus) -> Corpus:
    """``c`` with object addresses blanked, then exact duplicates merged into the first.

    Some docstrings show default arguments as ``<... object at 0x7f...>``, which
    changes from run to run; those addresses become ``0x...``. Pairs follow the
    merged passages and questions and are made unique, so a passage that is a
    positive under one copy stays one under the kept copy.
    """
    passages = [_ADDRESS.sub(" at 0x...", t) for t in c.passages]
    questions = [_ADDRESS.sub(" at 0x...", t) for t in c.questions]
    out = Corpus(skipped_modules=list(c.skipped_modules))
    out.passages, p_id = _first_ids(passages)
    out.questions, q_id = _first_ids(questions)
    first = {}
    for i, origin in zip(p_id, c.origins, strict=True):
        first.setdefault(i, origin)
    out.origins = [first[i] for i in range(len(out.passages))]
    out.pairs = sorted({(q_id[q], p_id[s]) for q, s in c.pairs})
    return out


def build_packages_corpus(packages: tuple[str, ...] = PACKAGES) -> tuple[Corpus, dict[str, int]]:
    """The deduplicated corpus of :data:`corpus.MODULES` and the submodules of ``packages``.

    Returns
    -------
    corpus : Corpus
    modules : dict of str to int
        Modules used per package (0: not installed or failed to import).
    """
    per: dict[str, int] = {}
    names = list(MODULES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in packages:
            got = submodules(p)
            per[p] = len(got)
            names += got
    return dedupe(build_corpus(tuple(names))), per


def build_packages_isolated(path: str | os.PathLike[str], timeout: float = 1800) -> Corpus:
    """Build the corpus in a fresh interpreter (imports are noisy), write it to ``path``, read it.

    The child ignores ``PYTHONPATH`` and the user's site directory but sees the
    installed packages; its output is discarded except the counts line. It runs
    with ``PYTHONHASHSEED=0``: without it the corpus changes from run to run.
    """
    # -s rather than -I: -I would also ignore PYTHONHASHSEED. Some packages build their
    # public names from sets; fixed string hashing keeps their order, and so the corpus,
    # the same on every run.
    cmd = [sys.executable, "-s", os.path.abspath(__file__), "--json", os.fspath(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    subprocess.run(cmd, check=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    return load_corpus(path)


def _main() -> None:
    import json
    from dataclasses import asdict

    # Importing thousands of modules prints; keep the terminal for the counts.
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        c, per = build_packages_corpus()
    if len(sys.argv) == 3 and sys.argv[1] == "--json":
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            json.dump(asdict(c), f)
    used = ", ".join(f"{p} {n}" for p, n in per.items() if n)
    missing = ", ".join(p for p, n in per.items() if not n) or "none"
    print(
        f"packages corpus: {len(c.passages):,} distinct passages, {len(c.questions):,} "
        f"questions, {len(c.pairs):,} pairs; Python {sys.version.split()[0]}\n"
        f"  modules per package: {used}\n  not installed or not importable: {missing}",
        file=sys.__stdout__,
    )


if __name__ == "__main__":
    _main()
    sys.stdout.flush()
    # Some packages start threads on import; do not wait for them.
    os._exit(0)
