"""openembed's engine in-process: load a sentence-transformers / Hugging Face model folder (or a
hub id) and embed texts with the same call shape as ``SentenceTransformer.encode``.

>>> from openembed import Model
>>> model = Model("models/all-MiniLM-L6-v2")
>>> model.encode(["hello", "world"]).shape
(2, 384)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ._openembed import Model as _NativeModel

__all__ = ["Model"]

# Texts handed to the engine per call when a progress bar is shown (the engine groups them by
# length into token-budget batches).
_PROGRESS_CHUNK = 1024


class Model:
    """An embedding model on openembed's engine.

    ``path_or_hub_id`` is a local folder (sentence-transformers or plain Hugging Face layout) or
    a hub id, resolved like ``openembed serve --model`` (``HF_HUB_OFFLINE`` is respected).
    ``dtype`` is ``"float32"`` (exact), ``"bfloat16"`` or ``"int8"``; ``threads`` defaults to all
    cores. The GIL is released while the engine runs; one model may be used from several threads.
    """

    def __init__(self, path_or_hub_id: str, *, dtype: str = "float32", threads: Optional[int] = None) -> None:
        self._model = _NativeModel(str(path_or_hub_id), dtype, threads)

    def encode(
        self,
        sentences: Union[str, Sequence[str]],
        batch_size: int = 32,
        *,
        show_progress_bar: Optional[bool] = None,
        normalize_embeddings: Optional[bool] = None,
        prompt_name: Optional[str] = None,
        prompt: Optional[str] = None,
        truncate_dim: Optional[int] = None,
        convert_to_numpy: bool = True,
        task: Optional[str] = None,
    ) -> Union[np.ndarray, List[np.ndarray]]:
        """Embeds ``sentences`` as ``SentenceTransformer.encode`` does.

        A ``str`` gives a 1-D array, a list a C-contiguous float32 ``(n, dim)`` array (or a list
        of 1-D arrays with ``convert_to_numpy=False``). Inputs longer than the model limit are
        cut at it. ``batch_size`` bounds the inputs per engine batch (inputs are grouped by
        length). ``prompt`` (text) or ``prompt_name`` (one of :attr:`prompts`) goes in front of
        every text; without either, the model's default prompt. ``normalize_embeddings`` L2-
        normalizes (after ``truncate_dim``); ``None`` keeps what the model's pipeline does.
        ``task`` picks a task adapter (jina-embeddings-v3).
        """
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("sentences must be a str or a sequence of str")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if prompt is None:
            name = prompt_name if prompt_name is not None else self._model.default_prompt_name
            if name is not None:
                prompts = self._model.prompts
                if name not in prompts:
                    raise ValueError(f"prompt_name {name!r} is not one of this model's prompts: {sorted(prompts)}")
                prompt = prompts[name]
        if truncate_dim is not None and not 1 <= truncate_dim <= self.dimension:
            raise ValueError(f"truncate_dim must be between 1 and {self.dimension}")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        bar = _progress(show_progress_bar, len(texts))
        for start in range(0, len(texts), _PROGRESS_CHUNK if bar else max(len(texts), 1)):
            chunk = texts[start : start + (_PROGRESS_CHUNK if bar else len(texts))]
            if not chunk:
                break
            raw, rows, dim = self._model.encode_raw(chunk, batch_size, prompt, task)
            out[start : start + rows] = np.frombuffer(raw, dtype="<f4").reshape(rows, dim)
            if bar:
                bar.update(rows)
        if bar:
            bar.close()
        if truncate_dim is not None:
            out = np.ascontiguousarray(out[:, :truncate_dim])
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)

    def tokenize(self, texts: Union[str, Sequence[str]], prompt: Optional[str] = None) -> List[List[int]]:
        """Token ids of each text, special tokens included, cut at the model limit."""
        return self._model.tokenize([texts] if isinstance(texts, str) else list(texts), prompt)

    @property
    def dimension(self) -> int:
        """Length of the vectors."""
        return self._model.dimension

    def get_sentence_embedding_dimension(self) -> int:
        """Length of the vectors (sentence-transformers' name)."""
        return self._model.dimension

    @property
    def max_seq_length(self) -> int:
        """Most tokens per input, special tokens included."""
        return self._model.max_seq_length

    @property
    def pooling(self) -> List[str]:
        """Pooling modes (``mean``, ``cls`` …)."""
        return self._model.pooling

    @property
    def normalize(self) -> bool:
        """Whether the model's pipeline L2-normalizes its vectors."""
        return self._model.normalize

    @property
    def prompts(self) -> Dict[str, str]:
        """Named prompts from the model's sentence-transformers config."""
        return self._model.prompts

    @property
    def tasks(self) -> List[str]:
        """Task adapters (jina-embeddings-v3); empty for other models."""
        return self._model.tasks

    @property
    def dtype(self) -> str:
        """Precision of the dense layers."""
        return self._model.dtype

    def __repr__(self) -> str:
        return (f"openembed.Model(architecture={self._model.architecture!r}, dimension={self.dimension}, "
                f"dtype={self.dtype!r}, threads={self._model.threads})")


def _progress(show: Optional[bool], total: int):
    """A tqdm bar when asked (or, with ``None``, never), when tqdm is installed."""
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="Batches", unit="text")
