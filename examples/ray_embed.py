#!/usr/bin/env python3
"""Embed a corpus with Ray Data and openembed: read JSONL or Parquet, `map_batches` over a pool of
actors that each load `openembed.Model` once, write Parquet with the input's id and the vector as a
fixed-size float32 list column.

Local:    python examples/ray_embed.py --input corpus.jsonl --output vectors/ --model models/all-MiniLM-L6-v2
Cluster:  ray start --head (on the head node), ray start --address=HEAD:6379 (on the others), then
          RAY_ADDRESS=HEAD:6379 python examples/ray_embed.py ... (or pass --address).

Each input row needs a text column (--text-column, default "text") and an id column (--id-column,
default "id"). Actors × threads per actor should equal the CPUs Ray may use: --actors 4 --threads 8
on a 32-core node. Needs `pip install ./python "ray[data]" pyarrow`.
"""

import argparse

import numpy as np
import pyarrow as pa
import ray

import openembed


class Embedder:
    """A Ray Data callable class: one model per actor, reused for every batch it is given."""

    def __init__(self, model: str, threads: int, dtype: str, text_column: str, id_column: str, batch_size: int):
        self.model = openembed.Model(model, threads=threads, dtype=dtype)
        self.text_column, self.id_column, self.batch_size = text_column, id_column, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        vectors = self.model.encode(texts, batch_size=self.batch_size)
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), type=pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, self.model.dimension)
        return pa.table({self.id_column: batch.column(self.id_column), "embedding": column})


def embed(input_path, output_path, model, actors, threads, dtype="float32", text_column="text", id_column="id",
          rows_per_batch=1024, batch_size=32, cpus_per_actor=None):
    """Runs the pipeline on the current Ray instance; returns the number of rows written.

    Each actor reserves `cpus_per_actor` of Ray's CPUs (default: its threads). Reading and
    writing are Ray tasks that need CPUs too: on a machine where the actors would take every
    CPU, reserve a little less (e.g. 0.5 for one thread) so those tasks can run beside them."""
    if input_path.endswith(".parquet") or not input_path.endswith((".jsonl", ".json")):
        ds = ray.data.read_parquet(input_path)
    else:
        ds = ray.data.read_json(input_path, lines=True)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(model, threads, dtype, text_column, id_column, batch_size),
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        concurrency=actors,
        num_cpus=threads if cpus_per_actor is None else cpus_per_actor,
    )
    ds.write_parquet(output_path)
    return ds.count()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="a .jsonl file or a Parquet file/folder")
    p.add_argument("--output", required=True, help="Parquet output folder")
    p.add_argument("--model", default="models/all-MiniLM-L6-v2", help="model folder or hub id")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="compute threads per actor")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--text-column", default="text")
    p.add_argument("--id-column", default="id")
    p.add_argument("--rows-per-batch", type=int, default=1024)
    p.add_argument("--cpus-per-actor", type=float, default=None, help="Ray CPUs each actor reserves (default: --threads)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    a = p.parse_args()
    ray.init(address=a.address)
    n = embed(a.input, a.output, a.model, a.actors, a.threads, a.dtype, a.text_column, a.id_column, a.rows_per_batch,
              cpus_per_actor=a.cpus_per_actor)
    print(f"{n} rows embedded into {a.output}")


if __name__ == "__main__":
    main()
