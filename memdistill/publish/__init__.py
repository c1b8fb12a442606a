"""Handing the dataset on: `memdistill push` to the Hugging Face Hub and `memdistill dvc-push`."""
