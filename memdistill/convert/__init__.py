"""The convert stage: readers of the intermediate dataset, token ids, the mass cut, the cartridges writer,
the validation split, convert's figures, and sharded conversion on Ray."""
