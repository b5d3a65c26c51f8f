"""Agent tools behind one registry: `code`, `text_search`, `image_search`, `web_visit`.

A tool is anything with `name`, `description`, `parameters` (a short JSON-schema-like dict shown to the
model) and `__call__(arguments, context) -> ToolResult` (the `Tool` protocol). `ToolRegistry.call` looks the
tool up, runs it and turns every failure (unknown tool, missing argument, a tool exception) into a
`ToolResult(ok=False, error=...)` that the loop sends back as the observation; it never raises for what a
model wrote.

Built-in tools (these machines have no internet, so search and browsing are local plug-ins):
- `code`: Python in the sandbox (`r1v.agent.sandbox.run_code`) with the episode's current images as
  `image` / `images`; images passed to `save(img)` come back as new observation images.
- `text_search`: Okapi BM25 over the paragraphs of the .txt/.md files of a local folder.
- `image_search`: nearest images in a local folder by a small embedding (a 16x16 grey thumbnail plus a
  4x4 colour thumbnail, cosine similarity; pluggable); the query is one of the episode's images.
- `web_visit`: reads a page from an allow-list of local folders (`file://` URLs or paths inside them, or
  URLs mapped by the folder's `urls.json`), HTML reduced to text; never touches the network.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from r1v.agent.protocol import ToolCall

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class ToolContext:
    """What a tool may see of the episode: its current image files and a folder for its outputs."""

    images: list[Path]
    work_dir: Path


@dataclass
class ToolResult:
    """A tool's answer: text for the observation, new image files, and `error` when it failed."""

    ok: bool
    text: str
    images: list[Path] = field(default_factory=list)
    error: str | None = None

    def observation_text(self) -> str:
        if self.ok:
            return self.text or "(no output)"
        return f"error: {self.error}" + (f"\n{self.text}" if self.text else "")


class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, str]

    def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult: ...


class ToolRegistry:
    """Tools by name; `call` is the only way the loop runs one."""

    def __init__(self, tools: Sequence[Tool] = ()) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        self.tools[tool.name] = tool

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def describe(self) -> str:
        """One line per tool, for the system prompt."""
        return "\n".join(f"- {t.name}({', '.join(f'{k}: {v}' for k, v in t.parameters.items())}): {t.description}"
                         for t in self.tools.values())

    def call(self, call: ToolCall, context: ToolContext) -> ToolResult:
        tool = self.tools.get(call.name)
        if tool is None:
            return ToolResult(False, "", error=f"unknown tool {call.name!r}; available: {', '.join(self.tools)}")
        missing = [k for k in tool.parameters if k not in call.arguments and not _optional(tool.parameters[k])]
        if missing:
            return ToolResult(False, "", error=f"tool {call.name!r} needs argument(s) {', '.join(missing)}")
        try:
            return tool(call.arguments, context)
        except Exception as e:  # noqa: BLE001 - a tool failure is an observation, not a crash
            return ToolResult(False, "", error=f"tool {call.name!r} failed: {type(e).__name__}: {e}")


def _optional(spec: str) -> bool:
    return "optional" in spec


# ----------------------------------------------------------------------------------------------- code


class CodeTool:
    """Python in the sandbox with the episode's images (`image` = the first, `images` = all)."""

    name = "code"
    description = ("run Python on the images (PIL `image`, list `images`); `save(img)` returns an image to "
                   "you; print() text")
    parameters = {"code": "str"}

    def __init__(self, limits: Any = None) -> None:
        self.limits = limits

    def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        from r1v.agent.sandbox import SandboxLimits, run_code

        code = arguments["code"]
        if not isinstance(code, str):
            return ToolResult(False, "", error="\"code\" must be a string of Python")
        context.work_dir.mkdir(parents=True, exist_ok=True)
        result = run_code(code, images=context.images, limits=self.limits or SandboxLimits(),
                          out_dir=context.work_dir)
        text = result.stdout.strip()
        if result.ok:
            return ToolResult(True, text, list(result.outputs))
        stderr = result.stderr.strip().splitlines()
        detail = "\n".join(stderr[-6:])  # the end of a traceback says what went wrong
        return ToolResult(False, "\n".join(x for x in (text, detail) if x), list(result.outputs),
                          error=result.error or "the code failed")


# ----------------------------------------------------------------------------------------- text search


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25:
    """Okapi BM25 (k1, b) over a list of documents; `search(query, k)` -> [(doc index, score)]."""

    def __init__(self, docs: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.tfs = [Counter(tokenize(d)) for d in docs]
        self.lengths = [sum(tf.values()) for tf in self.tfs]
        self.avg_len = (sum(self.lengths) / len(self.lengths)) if self.lengths else 0.0
        df: Counter[str] = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(docs)
        self.idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}

    def score(self, query: str, i: int) -> float:
        tf, length = self.tfs[i], self.lengths[i]
        norm = self.k1 * (1 - self.b + self.b * length / (self.avg_len or 1.0))
        return sum(self.idf.get(w, 0.0) * tf[w] * (self.k1 + 1) / (tf[w] + norm) for w in set(tokenize(query)))

    def search(self, query: str, k: int = 3) -> list[tuple[int, float]]:
        scored = [(i, self.score(query, i)) for i in range(len(self.tfs))]
        scored = [x for x in scored if x[1] > 0]
        return sorted(scored, key=lambda x: (-x[1], x[0]))[:k]


class TextSearchTool:
    """BM25 over the paragraphs of the .txt/.md files of a local folder (indexed on first use)."""

    name = "text_search"
    description = "search the local documents; returns the best matching passages with their file"
    parameters = {"query": "str", "top_k": "int, optional"}

    def __init__(self, folder: str | Path, top_k: int = 3, max_chars: int = 600) -> None:
        self.folder, self.top_k, self.max_chars = Path(folder), top_k, max_chars
        self._index: tuple[BM25, list[tuple[str, str]]] | None = None

    def _build(self) -> tuple[BM25, list[tuple[str, str]]]:
        passages: list[tuple[str, str]] = []
        for path in sorted(self.folder.rglob("*")):
            if path.suffix.lower() in (".txt", ".md") and path.is_file():
                text = path.read_text(errors="replace")
                for para in re.split(r"\n\s*\n", text):
                    if para.strip():
                        passages.append((str(path.relative_to(self.folder)), para.strip()))
        return BM25([p for _, p in passages]), passages

    def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        query = arguments["query"]
        if not isinstance(query, str) or not query.strip():
            return ToolResult(False, "", error="\"query\" must be a non-empty string")
        if self._index is None:
            self._index = self._build()
        index, passages = self._index
        hits = index.search(query, int(arguments.get("top_k", self.top_k)))
        if not hits:
            return ToolResult(True, f"no document matches {query!r}")
        lines = [f"[{rank}] {passages[i][0]} (score {s:.2f}): {passages[i][1][: self.max_chars]}"
                 for rank, (i, s) in enumerate(hits, 1)]
        return ToolResult(True, "\n".join(lines))


# ---------------------------------------------------------------------------------------- image search


def image_embedding(image: Image.Image) -> np.ndarray:
    """A unit vector: a 16x16 grey thumbnail (structure, mean removed) and a 4x4 colour thumbnail (centred)."""
    rgb = image.convert("RGB")
    grey = np.asarray(rgb.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel() / 255.0
    grey = grey - grey.mean()
    norm = float(np.linalg.norm(grey))
    grey = grey / norm if norm > 1e-3 else np.zeros_like(grey)  # a flat image has no structure
    colour = np.asarray(rgb.resize((4, 4), Image.BILINEAR), dtype=np.float32).ravel() / 255.0 - 0.5
    colour = colour / (np.linalg.norm(colour) + 1e-8)
    vec = np.concatenate([grey, colour])
    return vec / (np.linalg.norm(vec) + 1e-8)


class ImageSearchTool:
    """Nearest images in a local folder to one of the episode's images; the best matches come back."""

    name = "image_search"
    description = "find the most similar images in the local image collection (image_index: which image)"
    parameters = {"image_index": "int, optional (default 0)", "top_k": "int, optional"}

    def __init__(self, folder: str | Path, top_k: int = 3, return_images: int = 1,
                 embed: Callable[[Image.Image], np.ndarray] = image_embedding) -> None:
        self.folder, self.top_k, self.return_images, self.embed = Path(folder), top_k, return_images, embed
        self._index: tuple[list[Path], np.ndarray] | None = None

    def _build(self) -> tuple[list[Path], np.ndarray]:
        paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        vectors = []
        for p in paths:
            with Image.open(p) as im:
                vectors.append(self.embed(im))
        return paths, np.stack(vectors) if vectors else np.zeros((0, 1), np.float32)

    def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        idx = arguments.get("image_index", 0)
        if not isinstance(idx, int) or not 0 <= idx < len(context.images):
            return ToolResult(False, "", error=f"image_index must be an integer in [0, {len(context.images)})")
        if self._index is None:
            self._index = self._build()
        paths, matrix = self._index
        if not paths:
            return ToolResult(True, "the image collection is empty")
        with Image.open(context.images[idx]) as im:
            query = self.embed(im)
        sims = matrix @ query
        order = np.argsort(-sims, kind="stable")[: int(arguments.get("top_k", self.top_k))]
        lines = [f"[{r}] {paths[i].relative_to(self.folder)} (similarity {sims[i]:.3f})" for r, i in enumerate(order, 1)]
        return ToolResult(True, "\n".join(lines), [paths[i] for i in order[: self.return_images]])


# ------------------------------------------------------------------------------------------- web visit


class _TextOfHTML(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in ("p", "div", "li", "h1", "h2", "h3", "br", "tr"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOfHTML()
    parser.feed(html)
    return re.sub(r"\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", "".join(parser.parts))).strip()


class WebVisitTool:
    """Read a page from an allow-list of local folders: never the network.

    A URL resolves to a file when it is `file://PATH` or a plain path inside an allowed folder, or when an
    allowed folder's `urls.json` ({"https://...": "page.html"}) maps it. Anything else is refused.
    """

    name = "web_visit"
    description = "read a web page (from the local page collection) as text"
    parameters = {"url": "str"}

    def __init__(self, folders: Sequence[str | Path], max_chars: int = 4000) -> None:
        self.folders = [Path(f).resolve() for f in folders]
        self.max_chars = max_chars

    def resolve(self, url: str) -> Path | None:
        for folder in self.folders:
            mapping = folder / "urls.json"
            if mapping.is_file():
                target = json.loads(mapping.read_text()).get(url)
                if isinstance(target, str):
                    return self._inside(folder / target)
        parsed = urlparse(url)
        if parsed.scheme in ("file", ""):
            raw = Path(unquote(parsed.path if parsed.scheme == "file" else url))
            candidates = [raw] if raw.is_absolute() else [f / raw for f in self.folders]
            for c in candidates:
                found = self._inside(c)
                if found is not None:
                    return found
        return None

    def _inside(self, path: Path) -> Path | None:
        real = path.resolve()
        if real.is_file() and any(real.is_relative_to(f) for f in self.folders):
            return real
        return None

    def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        url = arguments["url"]
        if not isinstance(url, str):
            return ToolResult(False, "", error="\"url\" must be a string")
        path = self.resolve(url)
        if path is None:
            return ToolResult(False, "", error=f"{url!r} is not in the local page collection (no network access)")
        text = path.read_text(errors="replace")
        if path.suffix.lower() in (".html", ".htm"):
            text = html_to_text(text)
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"\n... ({len(text) - self.max_chars} more characters)"
        return ToolResult(True, text)


def default_registry(*, code_limits: Any = None, docs_dir: str | Path | None = None,
                     images_dir: str | Path | None = None, pages_dirs: Sequence[str | Path] = ()) -> ToolRegistry:
    """`code` always; the search/visit tools when their local folders are given."""
    tools: list[Tool] = [CodeTool(code_limits)]
    if docs_dir is not None:
        tools.append(TextSearchTool(docs_dir))
    if images_dir is not None:
        tools.append(ImageSearchTool(images_dir))
    if pages_dirs:
        tools.append(WebVisitTool(pages_dirs))
    return ToolRegistry(tools)
