"""The snapshots stage: checkpoint reading, memory strategies, the token budget, feedback reading,
redaction, and the prompt rows it writes."""
