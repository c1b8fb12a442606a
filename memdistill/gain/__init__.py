"""The gain stage: score every teacher completion under the student prompt (no memory) with the generating
model, and measure per token what the memory adds (docs/gain.md)."""
