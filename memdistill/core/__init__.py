"""What several stages share: parameters, file I/O, shards, errors, model and tokenizer loading, lineage,
the prompts and intermediate dataset files, and where work runs (local or Ray)."""
