"""The stats stage: figures, plots, the summary report, the dataset card, and `memdistill inspect`."""
