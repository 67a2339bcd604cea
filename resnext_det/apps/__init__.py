"""The application layer: what a person runs (benchmark, complexity table, scale tool, deploy
measurements, demo pictures), built on engine/ and deploy/; nothing below imports it."""
