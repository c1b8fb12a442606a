"""The generate stage: teachers, the response store, progress, the Ray executor, and conformance with
real engines."""
