"""The application layer: what a person runs (predict, export, convert weights, benchmark,
complexity, demo pictures, exported-model AP) on engine/ and deploy/; nothing below imports it."""
