"""
The test suite: `python -m pytest -q test_all.py`. CPU only, tiny shapes.
Sections (one per concern, in file order): scan reference, model, tasks, train/config,
Triton scan (interpreter), baselines/evaluate, reliability.
"""
import os
os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before ssm_scan is imported (see docs in ssm_scan.py)
import math
import pytest
import torch

# -----------------------------------------------------------------------------
# scan reference

# -----------------------------------------------------------------------------
# model

# -----------------------------------------------------------------------------
# tasks

# -----------------------------------------------------------------------------
# train / config

# -----------------------------------------------------------------------------
# Triton scan (interpreter)

# -----------------------------------------------------------------------------
# baselines / evaluate

# -----------------------------------------------------------------------------
# reliability
