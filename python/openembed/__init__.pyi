from typing import Dict, List, Optional, Sequence, Union, overload

import numpy as np

class Model:
    def __init__(self, path_or_hub_id: str, *, dtype: str = "float32", threads: Optional[int] = None) -> None: ...
    @overload
    def encode(
        self,
        sentences: str,
        batch_size: int = 32,
        *,
        show_progress_bar: Optional[bool] = None,
        normalize_embeddings: Optional[bool] = None,
        prompt_name: Optional[str] = None,
        prompt: Optional[str] = None,
        truncate_dim: Optional[int] = None,
        convert_to_numpy: bool = True,
        task: Optional[str] = None,
    ) -> np.ndarray: ...
    @overload
    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 32,
        *,
        show_progress_bar: Optional[bool] = None,
        normalize_embeddings: Optional[bool] = None,
        prompt_name: Optional[str] = None,
        prompt: Optional[str] = None,
        truncate_dim: Optional[int] = None,
        convert_to_numpy: bool = True,
        task: Optional[str] = None,
    ) -> Union[np.ndarray, List[np.ndarray]]: ...
    def tokenize(self, texts: Union[str, Sequence[str]], prompt: Optional[str] = None) -> List[List[int]]: ...
    def get_sentence_embedding_dimension(self) -> int: ...
    @property
    def dimension(self) -> int: ...
    @property
    def max_seq_length(self) -> int: ...
    @property
    def pooling(self) -> List[str]: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def prompts(self) -> Dict[str, str]: ...
    @property
    def tasks(self) -> List[str]: ...
    @property
    def dtype(self) -> str: ...
