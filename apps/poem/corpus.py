"""Re-create the Tang quatrain training corpus from packages (npm and Debian).

* ``chinese-poetry`` 2.0.1 from the npm registry (MIT): ``dist/quantangshi/poet.tang.*.json``,
  57,607 poems in traditional characters, fetched with ``npm pack`` into the cache;
* Debian's ``fortunes-zh`` (GPL): ``/usr/share/games/fortunes/tang300``, 313 poems, simplified.

Traditional characters are converted to simplified with OpenCC (``opencc`` on PyPI). Every
poem whose clauses are all five or all seven characters, alternating ``，`` and ``。``, gives
one quatrain per four clauses (a regulated eight-line poem gives two). About 60,000 quatrains.

    python -m apps.poem.corpus          # writes ~/.cache/mdl_tvm/poem/quatrains.txt
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from mdl_tvm.core.errors import DatasetMissingError
from mdl_tvm.core.io import atomic_write, cache_root

NPM_PACKAGE = "chinese-poetry@2.0.1"
TARBALL = "chinese-poetry-2.0.1.tgz"
TANG_JSON = re.compile(r"package/dist/quantangshi/poet\.tang\.\d+\.json")
FORTUNES_TANG300 = Path("/usr/share/games/fortunes/tang300")
CLAUSES = re.compile(r"(?:[^，。]+，[^，。]+。)+")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cache_dir() -> Path:
    """``$MDL_TVM_CACHE/poem`` (default ``~/.cache/mdl_tvm/poem``)."""
    path = cache_root("poem")
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_tarball(directory: Path | None = None) -> Path:
    """The ``chinese-poetry`` npm tarball, fetched once with ``npm pack`` (85 MB)."""
    directory = directory or cache_dir()
    path = directory / TARBALL
    if path.is_file():
        return path
    try:
        subprocess.run(["npm", "pack", NPM_PACKAGE, "--pack-destination", str(directory)],
                       check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DatasetMissingError("npm is not installed; install Node.js + npm (apt-get install "
                                  f"npm) or put {TARBALL} in {directory}") from None
    except subprocess.CalledProcessError as err:
        raise DatasetMissingError(f"`npm pack {NPM_PACKAGE}` failed: {err.stderr[-500:]}") from None
    return path


def npm_poems(tarball: Path) -> Iterator[str]:
    """Texts of the Tang poems of the npm package (traditional characters)."""
    with tarfile.open(tarball) as tf:
        for member in tf:
            if TANG_JSON.fullmatch(member.name):
                for poem in json.load(tf.extractfile(member)):
                    yield "".join(poem.get("paragraphs", []))


def fortunes_poems(path: Path = FORTUNES_TANG300) -> Iterator[str]:
    """Texts of the 313 poems of Debian's ``fortunes-zh`` (simplified)."""
    if not path.is_file():
        return
    for entry in ANSI.sub("", path.read_text(encoding="utf-8")).split("\n%"):
        lines = [ln.strip() for ln in entry.strip().splitlines()]
        body = [ln for ln in lines if ln and not ln.startswith(("《", "作者"))]
        yield "".join(body).replace("？", "。").replace("！", "。").replace("；", "，")


def quatrains(texts: Iterable[str]) -> Iterator[str]:
    """Four-clause units (``X5，X5。X5，X5。`` or seven-character) of regular poems."""
    for text in texts:
        text = text.replace(" ", "")
        if not CLAUSES.fullmatch(text):
            continue
        clauses = re.findall(r"[^，。]+[，。]", text)
        lengths = {len(c) - 1 for c in clauses}
        if len(lengths) != 1 or lengths.pop() not in (5, 7) or len(clauses) % 4:
            continue
        for i in range(0, len(clauses), 4):
            yield "".join(clauses[i:i + 4])


def build_corpus(out: Path | None = None) -> Path:
    """Write the simplified, de-duplicated quatrains one per line; returns the path."""
    try:
        import opencc
    except ImportError as err:
        raise DatasetMissingError("the corpus needs OpenCC: pip install 'mdl-tvm[apps]'") from err
    out = out or cache_dir() / "quatrains.txt"
    traditional = list(quatrains(npm_poems(fetch_tarball())))
    simplified = opencc.OpenCC("t2s").convert("\n".join(traditional)).split("\n")
    simplified += list(quatrains(fortunes_poems()))
    unique = list(dict.fromkeys(q for q in simplified if q))
    atomic_write(out, "\n".join(unique) + "\n")
    return out


def load_corpus(path: Path | None = None) -> list[str]:
    """The quatrains (built first if the file is missing)."""
    path = path or cache_dir() / "quatrains.txt"
    if not path.is_file():
        path = build_corpus(path)
    return path.read_text(encoding="utf-8").split()


if __name__ == "__main__":
    corpus = build_corpus()
    lines = corpus.read_text(encoding="utf-8").split()
    print(f"wrote {corpus}: {len(lines):,} quatrains, "
          f"{sum(len(x) == 24 for x in lines):,} five-character, "
          f"{sum(len(x) == 32 for x in lines):,} seven-character")
