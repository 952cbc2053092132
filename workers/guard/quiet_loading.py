"""Model loading without its progress noise: transformers' "Loading weights" bars, huggingface_hub's
download bars and their info chatter are turned off before a backend loads a model, so a command's stderr
holds its own output and real errors only.

Errors still show: the libraries' verbosity is set to `error`, not off, and what would otherwise be only a
warning about the packaged base model (weights missing or of the wrong shape) is raised by the loader
(`workers/guard/lite_encoder.py`). A user who sets TRANSFORMERS_VERBOSITY, HF_HUB_VERBOSITY or
HF_HUB_DISABLE_PROGRESS_BARS gets what that variable asks for.
"""

from __future__ import annotations

import os


def quiet_model_loading() -> None:
    """Turn off the model libraries' progress bars, and their logs below `error` unless asked for."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    if "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
        hf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        hf_logging.set_verbosity_error()
    if "HF_HUB_VERBOSITY" not in os.environ:
        hub_utils.logging.set_verbosity_error()
