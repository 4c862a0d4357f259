"""OpenAI CLIP's pixel mean and std: one home for the constants the data pipeline and the exporters share.

The model side (open_clip / Hugging Face preprocessing written by the exporters) and the data side
(`data.transforms`) must agree on them; `model` may not import `data`, so they live here.
"""

from __future__ import annotations

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
