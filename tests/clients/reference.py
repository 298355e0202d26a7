"""The sentence-transformers reference lines the client scripts compare against."""
import json


def untruncated_lines(path):
    """The reference lines (header skipped) whose text fits the model without truncation."""
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f.read().splitlines()[1:]]
    return [line for line in lines if line["tokens"] == line["untruncated_tokens"]]
