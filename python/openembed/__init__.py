"""openembed's engine in-process: load a sentence-transformers / Hugging Face model folder (or a
hub id) and embed texts with the same call shape as ``SentenceTransformer.encode``.

>>> from openembed import Model
>>> model = Model("models/all-MiniLM-L6-v2")
>>> model.encode(["hello", "world"]).shape
(2, 384)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union, overload

import numpy as np

from ._openembed import Model as _NativeModel

__all__ = ["Model"]

class Model:
    """An embedding model on openembed's engine.

    ``path_or_hub_id`` is a local folder (sentence-transformers or plain Hugging Face layout) or
    a hub id, resolved like ``openembed serve --model`` (``HF_HUB_OFFLINE`` is respected).
    ``dtype`` is ``"float32"`` (exact), ``"bfloat16"`` or ``"int8"``; ``threads`` defaults to all
    cores. Inputs given as token ids are the model's own (``token_ids="native"``, what
    :meth:`tokenize` returns) or tiktoken's (``"cl100k_base"``, ``"o200k_base"``, as OpenAI's API
    reads them). The GIL is released while the engine runs; one model may be used from several
    threads, and their calls share the engine's batches as server requests do.
    """

    def __init__(
        self,
        path_or_hub_id: str,
        *,
        dtype: str = "float32",
        threads: Optional[int] = None,
        token_ids: str = "native",
    ) -> None:
        self._model = _NativeModel(str(path_or_hub_id), dtype, threads, token_ids)

    @overload
    def encode(self, sentences: str, batch_size: int = ..., **options) -> np.ndarray: ...

    @overload
    def encode(
        self, sentences: Sequence[Union[str, Sequence[int]]], batch_size: int = ..., **options
    ) -> Union[np.ndarray, List[np.ndarray]]: ...

    def encode(
        self,
        sentences: Union[str, Sequence[Union[str, Sequence[int]]]],
        batch_size: int = 32,
        *,
        show_progress_bar: Optional[bool] = None,
        normalize_embeddings: Optional[bool] = None,
        prompt_name: Optional[str] = None,
        prompt: Optional[str] = None,
        truncate_dim: Optional[int] = None,
        convert_to_numpy: bool = True,
        task: Optional[str] = None,
        truncate: bool = True,
        precision: str = "float32",
        output: str = "dense",
        is_query: bool = False,
        **sparse_options,
    ) -> Union[np.ndarray, List[np.ndarray], Dict[int, float], List[Dict[int, float]]]:
        """Embeds ``sentences`` as ``SentenceTransformer.encode`` does.

        A ``str`` gives a 1-D array, a list a C-contiguous float32 ``(n, dim)`` array (or a list
        of 1-D arrays with ``convert_to_numpy=False``). An input may also be a list of token ids
        (see ``token_ids`` of :class:`Model`). Inputs longer than the model limit are cut at it
        (``truncate=False``: refused with ``ValueError``, as the server refuses them).
        ``prompt`` (text) or ``prompt_name`` (one of :attr:`prompts`) goes in front of every text;
        without either, the model's default prompt. ``truncate_dim`` cuts the vectors;
        ``normalize_embeddings`` L2-normalizes them (after the cut); ``None`` keeps what the
        model's pipeline does. ``task`` picks a task adapter (jina-embeddings-v3). Inputs run in
        the engine's token-budget batches (the same queue as the server's); ``batch_size`` is
        accepted for compatibility and must be at least 1. ``precision`` (``"int8"``,
        ``"uint8"``, ``"binary"``, ``"ubinary"``) gives compressed codes as the server's
        ``embedding_type`` does: sign bits packed 8 per byte as sentence-transformers'
        ``quantize_embeddings``, int8 / uint8 on the model's calibrated scale (the same codes for
        a text whatever else is encoded with it).

        ``output`` picks another of the model's outputs (see :attr:`outputs`): ``"sparse"``
        gives :meth:`encode_sparse`'s ``{token_id: weight}`` dicts, ``"multi"`` one float32
        ``(tokens, dim)`` array per text — a ColBERT or bge-m3 model's token vectors, as PyLate's
        ``encode`` (``is_query=True``: the query form, prefix and expansion) and bge-m3's
        ``colbert_vecs`` give them. With ``output="sparse"``, ``max_active_dims`` and
        ``min_weight`` limit the weights as in :meth:`encode_sparse`.
        """
        if sparse_options and output != "sparse":
            raise TypeError(f"{sorted(sparse_options)} apply to output='sparse' only")
        if output == "sparse":
            return self.encode_sparse(sentences, is_query=is_query, truncate=truncate, **sparse_options)
        if output == "multi":
            return self.encode_multi(sentences, is_query=is_query, truncate=truncate)
        if output != "dense":
            raise ValueError(f"output must be 'dense', 'sparse' or 'multi', not {output!r}")
        single = isinstance(sentences, str)
        inputs = [sentences] if single else list(sentences)
        if not all(isinstance(t, str) or (isinstance(t, (list, tuple)) and all(isinstance(i, int) for i in t))
                   for t in inputs):
            raise ValueError("sentences must be a str or a sequence of str (or of token-id lists)")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        bar = _progress(show_progress_bar, len(inputs))
        raw, rows, dim, dtype = self._model.encode_raw(
            [t if isinstance(t, str) else list(t) for t in inputs],
            prompt=prompt,
            prompt_name=prompt_name,
            task=task,
            dimensions=truncate_dim,
            normalize=bool(normalize_embeddings),
            truncate=truncate,
            progress=bar.update if bar else None,
            precision=precision,
        )
        if bar:
            bar.close()
        out = np.frombuffer(raw, dtype=dtype).reshape(rows, dim).copy()
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)

    def classify(
        self,
        texts: Union[str, Sequence[str]],
        text_pair: Union[None, str, Sequence[str]] = None,
        top_k: Optional[int] = None,
        function_to_apply: Optional[str] = None,
        truncate: bool = False,
    ) -> Union[List[Dict[str, object]], List[List[Dict[str, object]]]]:
        """Labels of a sequence-classification model, as transformers' ``text-classification``
        pipeline gives them with ``top_k=None``: for each text (paired with ``text_pair`` when
        given), every label with its score, best first — ``top_k`` keeps the best ``k``.
        ``function_to_apply`` (``"softmax"``, ``"sigmoid"``, ``"none"``) replaces the model's
        default (sigmoid for multi-label models). One text in, one list out."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] * len(texts) if isinstance(text_pair, str) else list(text_pair)
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be at least 1")
        labels = self._model.classify(texts, pairs, function_to_apply, truncate)
        out = [[{"label": label, "score": score} for label, score in per_text[:top_k]] for per_text in labels]
        return out[0] if single else out

    def encode_sparse(
        self,
        texts: Union[str, Sequence[str]],
        *,
        is_query: bool = False,
        truncate: bool = True,
        max_active_dims: Optional[int] = None,
        min_weight: Optional[float] = None,
    ) -> Union[Dict[int, float], List[Dict[int, float]]]:
        """A sparse model's (SPLADE, inference-free) vocabulary weights of each text, as
        ``{token_id: weight}`` with the non-zero entries only — what sentence-transformers'
        ``SparseEncoder.encode`` gives as a sparse tensor. ``is_query=True`` is
        ``encode_query``: an inference-free model looks queries up in its table (no
        transformer); other models encode them as documents. ``max_active_dims`` keeps each
        text's largest weights only (as ``SparseEncoder.encode(max_active_dims=...)``);
        ``min_weight`` drops the smaller ones. One text in, one dict out."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        out = [
            dict(zip(indices, values))
            for indices, values in self._model.encode_sparse(
                texts, is_query=is_query, truncate=truncate, max_active_dims=max_active_dims, min_weight=min_weight
            )
        ]
        return out[0] if single else out

    def encode_multi(
        self, texts: Union[str, Sequence[str]], *, is_query: bool = False, truncate: bool = True
    ) -> Union[np.ndarray, List[np.ndarray]]:
        """Token vectors of each text as a float32 ``(tokens, dim)`` array: a ColBERT model's
        (PyLate's ``encode(is_query=...)``: projected, normalized, a document's skiplist tokens
        dropped, a query in its query form) or bge-m3's ``colbert_vecs``; a model without a
        multi-vector output gives its last hidden states. One text in, one array out."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        dim = self._model.multi_vector_dimension
        out = [
            np.frombuffer(raw, dtype=np.float32).reshape(rows, dim).copy()
            for raw, rows in self._model.encode_multi(texts, is_query=is_query, truncate=truncate)
        ]
        return out[0] if single else out

    def encode_query(self, texts: Union[str, Sequence[str]], **options):
        """Queries in the model's own output: sparse weights for a sparse model (as
        ``SparseEncoder.encode_query``), token vectors for a ColBERT model (PyLate's
        ``encode(is_query=True)``), otherwise dense vectors."""
        return self.encode(texts, output=options.pop("output", self._default_output()), is_query=True, **options)

    def encode_document(self, texts: Union[str, Sequence[str]], **options):
        """Documents in the model's own output (see :meth:`encode_query`)."""
        return self.encode(texts, output=options.pop("output", self._default_output()), is_query=False, **options)

    def _default_output(self) -> str:
        outputs = self.outputs
        if "dense" in outputs:
            return "dense"
        return "sparse" if "sparse" in outputs else "multi"

    @property
    def outputs(self) -> List[str]:
        """The model's outputs: ``dense``, ``sparse``, ``multi_vector`` (and ``scores`` /
        ``labels`` for rerankers and classifiers)."""
        return self._model.outputs

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
