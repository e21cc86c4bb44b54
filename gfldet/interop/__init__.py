"""Converters between gfldet checkpoints and other frameworks' formats."""
